//! Turning measurements into the table, the JSON lines, and ratios to a baseline.

use std::collections::HashMap;
use std::fmt;
use std::path::Path as FsPath;

use serde_json::{Map, Value, json};

use crate::Path;
use crate::stats::median;
use crate::workloads::{Better, Measured, Workload};

impl Better {
    fn name(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// The machine a run happened on.
#[derive(Debug)]
pub struct Machine {
    cores: usize,
    kernel: String,
    cpu: String,
}

impl Machine {
    pub fn this() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu,
        }
    }

    fn json(&self) -> Value {
        json!({ "cores": self.cores, "kernel": self.kernel, "cpu": self.cpu })
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cores ({}), Linux {}", self.cores, self.cpu, self.kernel)
    }
}

/// The bar a workload must reach on a path: a headline limit, and for W5 a floor on the submit
/// rate too.
struct Bar {
    limit: f64,
    rate_floor: Option<f64>,
}

fn bar(workload: Workload, path: Path) -> Option<Bar> {
    use Path::{Distributed as D, Multicore as M};
    use Workload::*;
    let limit = match (workload, path) {
        (W1, M) => 250_000.0,
        (W1, D) => 100_000.0,
        (W2, M) => 50.0,
        (W2, D) => 200.0,
        (W3, M) => 1.01,
        (W3, D) => 1.02,
        (W4, M) => 1_000.0,
        (W4, D) => 500.0,
        (W5, D) => 200.0,
        (W6, D) => 70.0,
        (W7, M) => 10.0,
        (W7, D) => 20.0,
        (W8, M) => 20.0,
        (W8, D) => 100.0,
        (W16, D) => 90.0,
        (W18, _) => 95.0,
        (W19, _) => 10.0,
        (W21, _) => 1.2,
        _ => return None,
    };
    let rate_floor = (workload == W5).then_some(500_000.0);
    Some(Bar { limit, rate_floor })
}

/// One workload on one path, ready to print.
pub struct Record {
    workload: Workload,
    path: Path,
    measured: Measured,
    median: f64,
    min: f64,
    max: f64,
    machine: Value,
}

impl Record {
    pub fn new(workload: Workload, path: Path, measured: Measured, machine: &Machine) -> Self {
        let runs = &measured.runs;
        Self {
            workload,
            path,
            median: median(runs),
            min: runs.iter().copied().fold(f64::INFINITY, f64::min),
            max: runs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            measured,
            machine: machine.json(),
        }
    }

    pub fn json(&self) -> String {
        let extra: Map<String, Value> =
            self.measured.extra.iter().map(|(k, v)| (k.to_string(), json!(round(*v)))).collect();
        json!({
            "name": self.workload.name(),
            "path": self.path.name(),
            "params": self.measured.params,
            "median": round(self.median),
            "min": round(self.min),
            "max": round(self.max),
            "units": self.measured.units,
            "better": self.measured.better.name(),
            "runs": self.measured.runs.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            "extra": extra,
            "machine": self.machine,
        })
        .to_string()
    }

    /// Whether the bar is met, and the bar as text.
    fn verdict(&self) -> Option<(bool, String)> {
        let bar = bar(self.workload, self.path)?;
        let (met, text) = match self.measured.better {
            Better::Higher => (self.median >= bar.limit, format!(">= {}", number(bar.limit))),
            Better::Lower => (self.median <= bar.limit, format!("<= {}", number(bar.limit))),
        };
        Some(match bar.rate_floor {
            Some(floor) => {
                let rate = self.extra("submits_per_s").unwrap_or(0.0);
                (met && rate >= floor, format!("{text}, >= {}/s", number(floor)))
            }
            None => (met, text),
        })
    }

    fn extra(&self, name: &str) -> Option<f64> {
        self.measured.extra.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    pub fn print_row(&self, baseline: Option<&Baseline>) {
        let (verdict, bar) = match self.verdict() {
            Some((true, bar)) => ("ok", bar),
            Some((false, bar)) => ("MISS", bar),
            None => ("", String::new()),
        };
        let mut row = format!(
            "{:<4} {:<12} {:>12} {:>12} {:>12}  {:<13} {:<24} {:<5}",
            self.workload.name(),
            self.path.name(),
            number(self.median),
            number(self.min),
            number(self.max),
            self.measured.units,
            bar,
            verdict,
        );
        if let Some(baseline) = baseline {
            let ratio = baseline.ratio(self.workload, self.median, self.measured.better);
            row.push_str(&format!(
                " {:>10}",
                ratio.map(|r| format!("{r:.1}x")).unwrap_or_default()
            ));
        }
        println!("{}", row.trim_end());
        for (name, value) in &self.measured.extra {
            println!("{:<17} {name} = {}", "", number(*value));
        }
    }
}

pub fn print_header(with_baseline: bool) {
    let mut header = format!(
        "{:<4} {:<12} {:>12} {:>12} {:>12}  {:<13} {:<24} {:<5}",
        "", "path", "median", "min", "max", "units", "bar", ""
    );
    if with_baseline {
        header.push_str(&format!(" {:>10}", "vs Pool"));
    }
    println!("{}", header.trim_end());
}

/// `bench/pool_baseline.py`'s figures: median per workload.
#[derive(Debug)]
pub struct Baseline {
    medians: HashMap<String, f64>,
}

impl Baseline {
    pub fn load(path: &FsPath) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the baseline {}: {e}", path.display()))?;
        let mut medians = HashMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |what: &str| format!("{}:{}: {what}", path.display(), n + 1);
            let record: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
            let name = record["name"].as_str().ok_or_else(|| bad("no \"name\""))?;
            let median = record["median"].as_f64().ok_or_else(|| bad("no numeric \"median\""))?;
            medians.insert(name.to_string(), median);
        }
        if medians.is_empty() {
            return Err(format!("the baseline {} holds no workload", path.display()));
        }
        Ok(Self { medians })
    }

    /// How many times better ours is than the baseline's (above 1: ours is better).
    fn ratio(&self, workload: Workload, ours: f64, better: Better) -> Option<f64> {
        let theirs = *self.medians.get(workload.name())?;
        let ratio = match better {
            Better::Higher => ours / theirs,
            Better::Lower => theirs / ours,
        };
        ratio.is_finite().then_some(ratio)
    }
}

/// A figure for people: no decimals in the thousands, a few below.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 1_000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Four significant digits are plenty for noisy measurements.
fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(3 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(352_113.4), "352,113");
        assert_eq!(number(1_000.0), "1,000");
        assert_eq!(number(55.25), "55.2");
        assert_eq!(number(1.00437), "1.004");
        assert_eq!(round(352_113.4), 352_100.0);
        assert_eq!(round(1.004_37), 1.004);
    }
}
