//! AMD GPUs through amdgpu's sysfs (`mem_info_vram_total|used`, `gpu_busy_percent`, hwmon), named
//! by `rocm-smi --showproductname` when ROCm is installed, else `product_name` or the PCI ids.

use super::drm::{self, Card};
use super::{Accelerator, Devices, Found, Vendor, STATIC_COMMAND_TTL};

pub(super) async fn probe(devices: &Devices) -> Result<Found, String> {
    let root = devices.env.root.clone();
    let cards = super::blocking(move || {
        drm::cards(&root, &["amdgpu"])
            .into_iter()
            .map(|card| {
                let gpu = read_card(&root, &card);
                (card, gpu)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    if cards.is_empty() {
        return Ok(Found::absent("no GPU bound to amdgpu"));
    }
    // A missing or failing rocm-smi only costs the nicer names.
    let names = devices
        .run("rocm-smi", &["--showproductname"], STATIC_COMMAND_TTL)
        .await
        .map(|text| parse_rocm_product_names(&text))
        .unwrap_or_default();
    let gpus = cards
        .into_iter()
        .enumerate()
        .map(|(index, (_, mut gpu))| {
            if let Some(name) = names.get(index).and_then(Option::as_ref) {
                gpu.name.clone_from(name);
            }
            gpu
        })
        .collect();
    Ok(Found::devices(gpus, "amdgpu sysfs"))
}

fn read_card(root: &std::path::Path, card: &Card) -> Accelerator {
    let name = card
        .read("product_name")
        .or_else(|| drm::pci_name(root, card.vendor_id, card.device_id))
        .unwrap_or_else(|| format!("AMD GPU [{}]", card.pci_id()));
    let mut gpu = Accelerator::new(Vendor::Amd, name, "sysfs", &card.name);
    gpu.memory_total_bytes = card.read_u64("mem_info_vram_total");
    gpu.memory_used_bytes = card.read_u64("mem_info_vram_used");
    gpu.utilization_percent = card.read_u64("gpu_busy_percent").map(|p| p as f32);
    gpu.temperature_c = card.temperature_c();
    let version = super::read_trimmed(&root.join("sys/module/amdgpu/version"));
    gpu.driver = Some(match version {
        Some(version) => format!("{} {version}", card.driver),
        None => card.driver.clone(),
    });
    gpu
}

/// GPU indices past this are not taken from `rocm-smi`'s output.
const MAX_GPUS: usize = 256;

/// GPU index -> its marketing name, from `rocm-smi --showproductname`'s `Card series` (or
/// `Card model` when the series is missing) lines: `GPU[0]  : Card series:  Radeon RX 7900 XTX`.
pub(super) fn parse_rocm_product_names(text: &str) -> Vec<Option<String>> {
    let mut names: Vec<Option<String>> = Vec::new();
    let mut models: Vec<Option<String>> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("GPU[") else {
            continue;
        };
        let Some((index, rest)) = rest.split_once(']') else {
            continue;
        };
        // The index sizes the list below: a machine has a few GPUs, not millions.
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        if index >= MAX_GPUS {
            continue;
        }
        let mut parts = rest.splitn(3, ':').map(str::trim);
        let (Some(_), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let slot = match key {
            "Card series" | "Card Series" => &mut names,
            "Card model" | "Card Model" => &mut models,
            _ => continue,
        };
        if slot.len() <= index {
            slot.resize(index + 1, None);
        }
        slot[index] = Some(value.to_owned());
    }
    if names.len() < models.len() {
        names.resize(models.len(), None);
    }
    for (index, name) in names.iter_mut().enumerate() {
        // A model that is only a hex id says nothing more than the PCI ids do.
        if name.is_none() {
            *name = models
                .get(index)
                .cloned()
                .flatten()
                .filter(|model| !model.starts_with("0x"));
        }
    }
    names
}
