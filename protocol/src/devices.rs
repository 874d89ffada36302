//! The devices of counted resources: what a machine offers of each, as `--resources` reads it
//! ([`parse_offer`]: `gpu=2`, or by index `gpu=0,1`), every device of an offer
//! ([`devices_of`]), what a task was given ([`Devices`]), and the variable that names them in
//! its environment ([`device_variable`]).

use serde::{Deserialize, Serialize};

use crate::resources::{Capacity, check_name};

/// Devices of counted resources, by resource (`gpu` → `[1, 3]`): what a task was given. One
/// pointer wide and nothing allocated when empty, as it nearly always is: it is part of every
/// task and every result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices(Option<Box<DeviceList>>);

/// Resources by name, each with its device indices.
pub type DeviceList = Vec<(String, Vec<u32>)>;

impl Devices {
    /// These devices.
    pub fn new(list: Vec<(String, Vec<u32>)>) -> Self {
        Self((!list.is_empty()).then(|| Box::new(list)))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl std::ops::Deref for Devices {
    type Target = [(String, Vec<u32>)];

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl Serialize for Devices {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::deserialize(deserializer).map(Self::new)
    }
}

/// Counted resources a machine offers, as `--resources` reads them ([`parse_offer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// How many of each, by name, sorted, each once.
    pub counts: Vec<(String, u64)>,
    /// The devices of those named by index (`gpu=0,1`, `gpu=[3]`), sorted; a resource not
    /// listed here has the indices `0..count`.
    pub devices: Vec<(String, Vec<u32>)>,
}

/// Reads counted resources as `--resources` takes them: `NAME=COUNT` pairs separated by commas
/// (`gpu=2,license=1`: devices 0 and 1, and device 0), or a resource's device indices
/// (`gpu=0,1`, or `gpu=[3]` for one device: a single number alone is a count). Each name once,
/// each index once, every count at least 1.
pub fn parse_offer(text: &str) -> Result<Offer, String> {
    // Each `NAME=...` starts a group; a part without `=` continues the group before it.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((name, value)) => groups.push((name.trim(), vec![value.trim()])),
            None => match groups.last_mut() {
                Some((_, values)) => values.push(part),
                None => return Err(format!("`{part}` is not NAME=COUNT (e.g. gpu=2)")),
            },
        }
    }
    let mut offer = Offer::default();
    for (name, values) in groups {
        check_name(name)?;
        if offer.counts.iter().any(|(n, _)| n == name) {
            return Err(format!("`{name}` is named twice"));
        }
        let joined = values.join(",");
        let listed = joined.strip_prefix('[').and_then(|v| v.strip_suffix(']'));
        if listed.is_none() && values.len() == 1 {
            let count: u64 = (joined.parse())
                .map_err(|_| format!("`{joined}` in `{name}={joined}` is not a count"))?;
            if count == 0 {
                return Err(format!("`{name}={joined}`: a count must be at least 1"));
            }
            offer.counts.push((name.to_string(), count));
            continue;
        }
        let mut indices = Vec::new();
        for index in listed.unwrap_or(&joined).split(',').map(str::trim) {
            let index: u32 = (index.parse())
                .map_err(|_| format!("`{index}` in `{name}={joined}` is not a device index"))?;
            if indices.contains(&index) {
                return Err(format!("`{name}={joined}` names device {index} twice"));
            }
            indices.push(index);
        }
        indices.sort_unstable();
        offer.counts.push((name.to_string(), indices.len() as u64));
        offer.devices.push((name.to_string(), indices));
    }
    offer.counts.sort();
    offer.devices.sort();
    Ok(offer)
}

/// The devices of each counted resource of `capacity`: those `devices` names, else
/// `0..count`.
pub fn devices_of(capacity: &Capacity, devices: &[(String, Vec<u32>)]) -> Vec<(String, Vec<u32>)> {
    let named = |name: &str| devices.iter().find(|(n, _)| n == name).map(|(_, i)| i.clone());
    (capacity.custom.iter())
        .map(|(name, count)| {
            let all = (0..u32::try_from(*count).unwrap_or(u32::MAX)).collect();
            (name.clone(), named(name).unwrap_or(all))
        })
        .collect()
}

/// The environment variable that tells a task which devices of resource `name` it holds:
/// `BLITZEN_RESOURCE_` and the name in capitals (`BLITZEN_RESOURCE_GPU`).
pub fn device_variable(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("BLITZEN_RESOURCE_{upper}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_and_nonsense_refused() {
        let counts = |text| parse_offer(text).map(|o| o.counts);
        assert_eq!(
            counts("license=1, gpu=2").expect("parses"),
            vec![("gpu".to_string(), 2), ("license".to_string(), 1)]
        );
        for bad in ["gpu", "gpu=0", "gpu=-1", "gpu=x", "gpu=1,gpu=2", "=1", "g pu=1", "1,gpu=2"] {
            assert!(parse_offer(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_offer("").expect("empty"), Offer::default());
    }

    #[test]
    fn devices_are_named_by_index_or_counted_from_zero() {
        let offer = parse_offer("gpu=2,3, license=1, fpga=[7]").expect("parses");
        assert_eq!(
            offer.counts,
            vec![("fpga".into(), 1), ("gpu".into(), 2), ("license".into(), 1)]
        );
        assert_eq!(offer.devices, vec![("fpga".into(), vec![7]), ("gpu".into(), vec![2, 3])]);
        let capacity =
            Capacity::new(4, 1 << 30).with_resource("gpu", 2).with_resource("license", 3);
        assert_eq!(
            devices_of(&capacity, &offer.devices),
            vec![("gpu".into(), vec![2, 3]), ("license".into(), vec![0, 1, 2])]
        );
        assert_eq!(
            parse_offer("gpu=[0,1]").expect("parses").devices,
            vec![("gpu".into(), vec![0, 1])]
        );
        for bad in ["gpu=0,0", "gpu=[]", "gpu=0,x", "gpu=[1", "gpu=-1,2"] {
            assert!(parse_offer(bad).is_err(), "{bad}");
        }
        let given = Devices::new(vec![("gpu".into(), vec![3])]);
        let bytes = rmp_serde::to_vec_named(&given).expect("encodes");
        assert_eq!(rmp_serde::from_slice::<Devices>(&bytes).expect("decodes"), given);
        assert_eq!(&given[..], &[("gpu".to_string(), vec![3])]);
        assert!(Devices::new(Vec::new()).is_empty() && Devices::default().is_empty());
        assert_eq!(std::mem::size_of::<Devices>(), std::mem::size_of::<usize>(), "a pointer wide");
        assert_eq!(device_variable("gpu"), "BLITZEN_RESOURCE_GPU");
        assert_eq!(device_variable("my-fpga"), "BLITZEN_RESOURCE_MY_FPGA");
    }
}
