//! A TCP port on the root namespace's loopback that leads to an address inside one of the
//! harness's namespaces: how a browser on this machine (the dashboard test's headless
//! Chromium, or the person running `cargo xtask demo --keep`) reaches an admin listener
//! that listens on a namespace's own loopback. Nothing about the root namespace changes:
//! the port is an ordinary listening socket, and each connection's other half is a socket
//! made inside the namespace.

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::ns;

/// A forwarded port; it stops when dropped.
pub struct Forward {
    /// Where to connect in the root namespace.
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Copies one direction until it ends, then ends the other side's writing.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Forward {
    /// Listens on 127.0.0.1:`port` (0: any free port; a taken port falls back to any) and
    /// forwards each connection to `target` inside namespace `netns`.
    pub fn start(netns: &str, target: SocketAddr, port: u16) -> io::Result<Forward> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let netns = netns.to_string();
        let accept = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(_) => continue,
                };
                let netns = netns.clone();
                std::thread::spawn(move || {
                    let _ = client.set_nonblocking(false);
                    let inside = ns::in_ns(&netns, || {
                        TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    });
                    let Ok(inside) = inside else {
                        let _ = client.shutdown(Shutdown::Both);
                        return;
                    };
                    let (Ok(c2), Ok(i2)) = (client.try_clone(), inside.try_clone()) else {
                        return;
                    };
                    let back = std::thread::spawn(move || pump(i2, c2));
                    pump(client, inside);
                    let _ = back.join();
                });
            }
        });
        Ok(Forward {
            local,
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
