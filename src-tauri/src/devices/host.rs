//! The host probe: OS, CPU and RAM through `sysinfo`.

use sysinfo::{CpuRefreshKind, System};

use super::{CpuInfo, MemoryInfo, OsInfo};

/// OS, CPU and memory of this machine. Cheap (a few files on Linux), so it runs inline.
pub(super) async fn probe() -> (OsInfo, CpuInfo, MemoryInfo) {
    let mut system = System::new();
    system.refresh_memory();
    system.refresh_cpu_list(CpuRefreshKind::nothing());
    let os = OsInfo {
        name: System::name(),
        version: System::os_version(),
        kernel: System::kernel_version(),
        arch: System::cpu_arch(),
    };
    let model = system
        .cpus()
        .first()
        .map(|cpu| cpu.brand().trim().to_owned())
        .filter(|brand| !brand.is_empty());
    let cpu = CpuInfo {
        model,
        cores: System::physical_core_count(),
        threads: system.cpus().len(),
    };
    let memory = MemoryInfo {
        total_bytes: system.total_memory(),
        used_bytes: system.used_memory(),
        available_bytes: system.available_memory(),
        swap_total_bytes: system.total_swap(),
        swap_used_bytes: system.used_swap(),
    };
    (os, cpu, memory)
}
