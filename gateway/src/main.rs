//! `sluice-gateway`: the L7 API gateway of every gateway node.
//!
//! Not built yet: the listener → router → policies → upstream pipeline is the next piece of
//! work (see README.md, "Status"). The crate exists so the workspace has its final shape.

fn main() {
    eprintln!(
        "sluice-gateway {}: the gateway is not built yet; see README.md (Status)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
