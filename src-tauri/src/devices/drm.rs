//! The Linux DRM cards under `<root>/sys/class/drm` that AMD and Intel probes read, and device
//! names from the PCI id database (`pci.ids`) when the system has one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{read_trimmed, read_u64};

/// One GPU as the kernel shows it.
pub(super) struct Card {
    /// `card0`.
    pub name: String,
    /// `<root>/sys/class/drm/card0/device`.
    pub device: PathBuf,
    /// The kernel driver bound to it: `amdgpu`, `i915`, `xe`, `nvidia`.
    pub driver: String,
    pub vendor_id: u16,
    pub device_id: u16,
}

impl Card {
    /// `1002:73bf`.
    pub fn pci_id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.device_id)
    }

    pub fn read(&self, file: &str) -> Option<String> {
        read_trimmed(&self.device.join(file))
    }

    pub fn read_u64(&self, file: &str) -> Option<u64> {
        read_u64(&self.device.join(file))
    }

    /// The first hwmon temperature (`temp1_input`, millidegrees), in °C.
    pub fn temperature_c(&self) -> Option<f32> {
        let hwmon = std::fs::read_dir(self.device.join("hwmon")).ok()?;
        let mut dirs: Vec<PathBuf> = hwmon.flatten().map(|entry| entry.path()).collect();
        dirs.sort();
        dirs.iter()
            .find_map(|dir| read_u64(&dir.join("temp1_input")))
            .map(|milli| milli as f32 / 1000.0)
    }

    pub fn has_hwmon(&self) -> bool {
        self.device.join("hwmon").is_dir()
    }
}

/// The cards (not their connectors, `card0-DP-1`) bound to one of `drivers`, by card number.
pub(super) fn cards(root: &Path, drivers: &[&str]) -> Vec<Card> {
    let Ok(entries) = std::fs::read_dir(root.join("sys/class/drm")) else {
        return Vec::new();
    };
    let mut cards: Vec<(u32, Card)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number: u32 = name.strip_prefix("card")?.parse().ok()?;
            let device = entry.path().join("device");
            // uevent names the driver and the PCI ids, and is a plain file in fixture trees.
            let uevent = read_trimmed(&device.join("uevent"))?;
            let field = |key: &str| {
                uevent
                    .lines()
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let driver = field("DRIVER")?;
            if !drivers.contains(&driver.as_str()) {
                return None;
            }
            let (vendor, device_id) = field("PCI_ID")
                .and_then(|id| {
                    let (vendor, device) = id.split_once(':')?;
                    Some((
                        u16::from_str_radix(vendor, 16).ok()?,
                        u16::from_str_radix(device, 16).ok()?,
                    ))
                })
                .unwrap_or_default();
            Some((
                number,
                Card {
                    name,
                    device,
                    driver,
                    vendor_id: vendor,
                    device_id,
                },
            ))
        })
        .collect();
    cards.sort_by_key(|(number, _)| *number);
    cards.into_iter().map(|(_, card)| card).collect()
}

/// The device's name in the first `pci.ids` found under `root`, e.g. `Navi 21 [Radeon RX 6800/6800
/// XT / 6900 XT]`.
pub(super) fn pci_name(root: &Path, vendor: u16, device: u16) -> Option<String> {
    let path = [
        "usr/share/misc/pci.ids",
        "usr/share/hwdata/pci.ids",
        "usr/share/pci.ids",
    ]
    .iter()
    .map(|relative| root.join(relative))
    .find(|path| path.is_file())?;
    let file = std::fs::File::open(path).ok()?;
    let vendor = format!("{vendor:04x}");
    let device = format!("\t{device:04x}");
    let mut in_vendor = false;
    for line in BufReader::new(file).lines() {
        let line = line.ok()?;
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if !line.starts_with('\t') {
            if in_vendor {
                return None;
            }
            in_vendor = line.starts_with(&vendor);
        } else if in_vendor && line.starts_with(&device) {
            return Some(line[device.len()..].trim().to_owned());
        }
    }
    None
}
