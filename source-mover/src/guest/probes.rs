//! The list of guest file-system probes, in the order the plan asks them. Kept apart from the
//! traits in `guest/mod.rs` so the traits' module never imports the probes that implement them.

use super::{ext4, ntfs, swap, Probe};

/// The probes, in the order they are asked: the first that recognises a partition answers for
/// it. Adding a file system is one line here.
pub static PROBES: &[&dyn Probe] = &[&ext4::Ext4Probe, &ntfs::NtfsProbe, &swap::SwapProbe];

/// The probe of [`PROBES`] with this [`Probe::name`] (a deferred file walk names its probe).
pub fn probe_named(name: &str) -> Option<&'static dyn Probe> {
    PROBES.iter().copied().find(|p| p.name() == name)
}
