//! Measured facts about the three parties of a boot — the firmware, the boot chain, the
//! hypervisor — as one flat map of dotted keys to JSON values. Probes and inspectors produce
//! them (`firmware.*`, `chain.*`, `hypervisor.*`); `explain` matches known bugs against them.
//!
//! Keys are lower-case, dot-separated, with the party first: `firmware.mem_attr_protocol`,
//! `firmware.loader_data_nx`, `firmware.smccc_drivers`, `chain.shim.nx_compat`,
//! `hypervisor.qemu_version`. A fact that could not be measured is absent, never guessed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A set of measured facts, ordered by key (so records and reports are stable).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Facts(BTreeMap<String, Value>);

impl Facts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `key` = `value`, replacing an earlier measurement of the same key.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Adds every fact of `other` under `prefix` (`prefix.key`); an empty prefix adds them as
    /// they are.
    pub fn merge_prefixed(&mut self, prefix: &str, other: Facts) {
        for (k, v) in other.0 {
            let key = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            self.0.insert(key, v);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_facts_carry_their_prefix_and_later_values_win() {
        let mut fw = Facts::new();
        fw.set("mem_attr_protocol", true);
        fw.set("smccc_drivers", vec!["ArmPsciResetSystemLib"]);
        let mut all = Facts::new();
        all.set("firmware.mem_attr_protocol", false);
        all.merge_prefixed("firmware", fw);
        assert_eq!(
            all.get("firmware.mem_attr_protocol"),
            Some(&Value::Bool(true))
        );
        assert_eq!(all.len(), 2);
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(
            json,
            r#"{"firmware.mem_attr_protocol":true,"firmware.smccc_drivers":["ArmPsciResetSystemLib"]}"#
        );
        assert_eq!(serde_json::from_str::<Facts>(&json).unwrap(), all);
    }
}
