//! Prometheus text exposition. The values are read from BPF maps at scrape time, so there is
//! no registry to keep in step: a small writer is all that is needed.

use std::fmt::Write;

/// Builds a text-format exposition.
#[derive(Default)]
pub struct Writer {
    out: String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Writer {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// Adds a sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The exposition.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn format() {
        let mut w = super::Writer::default();
        w.family("a_total", "counter", "An a.");
        w.sample("a_total", &[("k", "v\"x")], 3.0);
        w.sample("a_total", &[], 0.5);
        assert_eq!(
            w.finish(),
            "# HELP a_total An a.\n# TYPE a_total counter\na_total{k=\"v\\\"x\"} 3\na_total 0.5\n"
        );
    }
}
