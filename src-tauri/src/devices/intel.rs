//! Intel GPUs through sysfs (`i915` and `xe`). The kernel tells little without the GPU tools:
//! the name comes from the PCI ids, VRAM from xe's `tile*/physical_vram_size_bytes` on discrete
//! cards, the temperature from hwmon. An integrated GPU shares the system's RAM.

use super::drm::{self, Card};
use super::{Accelerator, Devices, Found, Vendor};

pub(super) async fn probe(devices: &Devices) -> Result<Found, String> {
    let root = devices.env.root.clone();
    let gpus = super::blocking(move || {
        drm::cards(&root, &["i915", "xe"])
            .iter()
            .map(|card| read_card(&root, card))
            .collect::<Vec<_>>()
    })
    .await?;
    if gpus.is_empty() {
        return Ok(Found::absent("no GPU bound to i915 or xe"));
    }
    Ok(Found::devices(gpus, "i915/xe sysfs"))
}

fn read_card(root: &std::path::Path, card: &Card) -> Accelerator {
    let name = drm::pci_name(root, card.vendor_id, card.device_id)
        .unwrap_or_else(|| format!("Intel GPU [{}]", card.pci_id()));
    let mut gpu = Accelerator::new(Vendor::Intel, name, "sysfs", &card.name);
    let vram: Vec<u64> = (0..8)
        .map_while(|tile| card.read_u64(&format!("tile{tile}/physical_vram_size_bytes")))
        .collect();
    if !vram.is_empty() {
        gpu.memory_total_bytes = Some(vram.iter().sum());
    }
    gpu.temperature_c = card.temperature_c();
    gpu.driver = Some(card.driver.clone());
    // Discrete cards have their own VRAM and sensors; an integrated GPU has neither.
    gpu.unified = vram.is_empty() && !card.has_hwmon();
    gpu
}
