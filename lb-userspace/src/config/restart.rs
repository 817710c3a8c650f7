//! What a reload cannot change: settings taken once, when the agent starts. A file that
//! changes one is refused with the field, so that a reload never reports as applied what
//! is not in force (the running value stays until a restart).

use sluice_util::FieldError;

use super::Config;

/// Refuses `new` if it changes a setting of `old` that only a restart applies:
/// - `node.pin_dir`: the maps are pinned there, and every link and check reads from there;
/// - `node.flow_table_size`: the flow tables are sized when they are made, and the pinned
///   ones would refuse another size at the next start;
/// - `node.xdp_mode`: the interfaces already attached keep the mode they were attached in;
/// - `admin.listen` and `admin.host_names`: bound and handed to the admin API at start;
/// - `bgp.bird_socket`, `bgp.bird_dir` and `bgp.bird_binary`: the running BIRD lives there,
///   and a new place would start a second one beside it;
/// - `bgp.state_dir`: the maintenance switch is kept there, and would be lost by a move.
pub fn restart_needed(old: &Config, new: &Config) -> Result<(), FieldError> {
    const WHY: &str = "taken at start: a change needs a restart of sluice-lb (the running \
                       value stays in force)";
    macro_rules! fixed {
        ($old:expr, $new:expr, $($field:ident).+) => {
            if $old.$($field).+ != $new.$($field).+ {
                return Err(FieldError::new(stringify!($($field).+), WHY));
            }
        };
    }
    fixed!(old, new, node.pin_dir);
    fixed!(old, new, node.flow_table_size);
    fixed!(old, new, node.xdp_mode);
    fixed!(old, new, admin.listen);
    fixed!(old, new, admin.host_names);
    if let (Some(was), Some(now)) = (&old.bgp, &new.bgp) {
        let refuse = |field: &str| Err(FieldError::new(format!("bgp.{field}"), WHY));
        if was.bird_socket != now.bird_socket {
            return refuse("bird_socket");
        }
        if was.bird_dir != now.bird_dir {
            return refuse("bird_dir");
        }
        if was.bird_binary != now.bird_binary {
            return refuse("bird_binary");
        }
        if was.state_dir != now.state_dir {
            return refuse("state_dir");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_node: &str, admin: &str, bgp: &str) -> Config {
        let text = format!(
            "[node]\ninterfaces = [\"eth0\"]\ntunnel_source_v4 = \"10.1.0.1\"\n{extra_node}\n\
             [admin]\n{admin}\n{bgp}\n\
             [[vip]]\naddress = \"198.51.100.1\"\nport = 80\nprotocol = \"tcp\"\n\
             backends = [{{ address = \"10.2.0.1\" }}]\n"
        );
        super::super::parse(std::path::Path::new("lb.toml"), &text).expect("a valid config")
    }

    const BGP: &str = "[bgp]\nlocal_as = 65001\nrouter_id = \"10.1.0.1\"\n\
                       peers = [{ address = \"10.1.0.254\", as = 65000 }]\n";

    #[test]
    fn settings_taken_at_start_are_refused_with_their_field() {
        let base = config("", "", BGP);
        assert_eq!(restart_needed(&base, &base), Ok(()));
        let cases = [
            (
                config("pin_dir = \"/sys/fs/bpf/other\"", "", BGP),
                "node.pin_dir",
            ),
            (
                config("flow_table_size = 4096", "", BGP),
                "node.flow_table_size",
            ),
            (config("xdp_mode = \"generic\"", "", BGP), "node.xdp_mode"),
            (
                config("", "listen = \"127.0.0.1:9999\"", BGP),
                "admin.listen",
            ),
            (
                config("", "host_names = [\"lb.example\"]", BGP),
                "admin.host_names",
            ),
            (
                config("", "", &format!("{BGP}bird_dir = \"/run/other\"\n")),
                "bgp.bird_dir",
            ),
            (
                config("", "", &format!("{BGP}bird_socket = \"/run/other.ctl\"\n")),
                "bgp.bird_socket",
            ),
            (
                config("", "", &format!("{BGP}state_dir = \"/var/lib/other\"\n")),
                "bgp.state_dir",
            ),
        ];
        for (new, field) in cases {
            let err = restart_needed(&base, &new).expect_err(field);
            assert_eq!(err.field, field);
            assert!(err.reason.contains("needs a restart"), "{}", err.reason);
        }
        // What a reload applies passes: backends, health, TTL, the shield, BGP peers, and
        // BGP itself switched on or off.
        let applied = [
            config("ttl = 32", "", BGP),
            config("", "", &BGP.replace("65000", "65010")),
            config("", "", ""),
        ];
        for new in applied {
            assert_eq!(restart_needed(&base, &new), Ok(()));
        }
    }
}
