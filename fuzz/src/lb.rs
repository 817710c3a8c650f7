//! Checks of `sluice-lb`'s parsers of outside input: its config file.

use std::{collections::HashMap, path::Path};

use sluice_lb::{
    config,
    controller::{plan, BackendStatus, Ids},
};

use crate::common::{check_refusal, Check};

/// Every `sluice-lb` target by name, for the replay tests.
pub const TARGETS: &[(&str, Check)] = &[("lb_config", lb_config)];

/// Target `lb_config`: `lb.toml` text through `config::parse` (what `sluice-lb check`, start
/// and every reload do), then, for a config it accepts, the plan the agent would write
/// (`controller::plan`, Maglev tables included) with every backend healthy.
///
/// Invariants beyond "no panic":
/// - a refusal names the file and the field: `line N` for a syntax or type error, else a
///   field path such as `vip[1].backends[0].weight`, with a reason;
/// - a config it accepts can be planned: no VIP or backend runs out of ids, and every table
///   builds (validation refuses what the data plane cannot hold);
/// - each table has the VIP's size, and names only its members with a weight, or no backend
///   (0) when none has one.
pub fn lb_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let config = match config::parse(path, text) {
        Ok(c) => c,
        Err(e) => return check_refusal(&e, path, text),
    };
    // Planning builds every table: keep each input quick.
    let slots: u64 = config.vips.iter().map(|v| u64::from(v.table_size)).sum();
    if slots > 1 << 20 {
        return;
    }
    let healthy = BackendStatus {
        healthy: true,
        ..Default::default()
    };
    let status: HashMap<_, _> = config
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .map(|b| (b.address, healthy))
        .collect();
    let planned = plan(&config, &status, &mut Ids::default())
        .unwrap_or_else(|e| panic!("an accepted config cannot be planned: {e}"));
    assert_eq!(planned.vips.len(), config.vips.len());
    for (v, p) in config.vips.iter().zip(&planned.vips) {
        assert_eq!(p.table.len(), v.table_size as usize, "{}", v.address);
        let live: Vec<u32> = p
            .members
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| m.id)
            .collect();
        assert!(
            p.table.iter().all(|id| if live.is_empty() {
                *id == 0
            } else {
                live.contains(id)
            }),
            "VIP {}: a slot names a backend without weight",
            v.address
        );
    }
}
