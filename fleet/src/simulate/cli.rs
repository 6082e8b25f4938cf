//! The `simulate` subcommand: flags over a scenario's defaults (or a YAML file), then the
//! table, the JSON, the plots and the recommendation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::config::{Balancer, Scenario, SimConfig, Strategy};
use super::{plot, recommend, report, run_scenario};

/// `ballast-fleet simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// What to replay.
    #[arg(long, value_enum, default_value = "incident")]
    scenario: Scenario,
    /// A YAML file with any of the parameters (see the README); flags given override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Strategies to compare, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    strategies: Vec<Strategy>,
    #[arg(long)]
    agents: Option<u64>,
    #[arg(long)]
    pods: Option<usize>,
    /// Connections one pod holds at most.
    #[arg(long)]
    capacity: Option<u64>,
    /// Handshakes one pod completes per second.
    #[arg(long)]
    handshakes_per_second: Option<f64>,
    /// Ballast's fleet-wide reconnect budget ceiling (maxReconnectsPerSecond).
    #[arg(long)]
    max_reconnects_per_second: Option<f64>,
    #[arg(long, value_enum)]
    balancer: Option<Balancer>,
    /// Seconds.
    #[arg(long)]
    offline_threshold: Option<f64>,
    /// Simulated seconds.
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Write SVG plots into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Search for the pods and budget that keep false offline at 0 (runs Ballast repeatedly).
    #[arg(long)]
    recommend: bool,
    /// Print the configuration in force as YAML and exit.
    #[arg(long)]
    print_config: bool,
}

impl SimulateArgs {
    fn config(&self) -> Result<SimConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                // The file's scenario picks the defaults the file then overrides.
                let head: serde_yaml::Value = serde_yaml::from_str(&text)
                    .with_context(|| format!("{} is not YAML", path.display()))?;
                let scenario = match head.get("scenario") {
                    Some(v) => serde_yaml::from_value(v.clone())
                        .with_context(|| format!("{}: scenario", path.display()))?,
                    None => self.scenario,
                };
                let mut merged = serde_yaml::to_value(SimConfig::for_scenario(scenario))?;
                if let (Some(m), serde_yaml::Value::Mapping(over)) = (merged.as_mapping_mut(), head)
                {
                    for (k, v) in over {
                        m.insert(k, v);
                    }
                }
                serde_yaml::from_value(merged)
                    .with_context(|| format!("{}: invalid parameters", path.display()))?
            }
            None => SimConfig::for_scenario(self.scenario),
        };
        if !self.strategies.is_empty() {
            cfg.strategies = self.strategies.clone();
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { cfg.$f = v; } )* };
        }
        set!(
            agents,
            pods,
            capacity,
            handshakes_per_second,
            max_reconnects_per_second,
            balancer,
            offline_threshold,
            duration,
            seed
        );
        if let Err(e) = cfg.validate() {
            bail!("invalid simulation parameters: {e}");
        }
        Ok(cfg)
    }
}

pub fn main(args: SimulateArgs) -> Result<()> {
    let cfg = args.config()?;
    if args.print_config {
        print!("{}", serde_yaml::to_string(&cfg)?);
        return Ok(());
    }
    let started = Instant::now();
    let (report, runs) = run_scenario(&cfg, args.json);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::print_table(&report));
        eprintln!(
            "[simulate] {} strategies in {:.1} s wall time, peak memory {}",
            runs.len(),
            started.elapsed().as_secs_f64(),
            peak_memory().map_or("unknown".into(), |kib| format!(
                "{:.0} MiB",
                kib as f64 / 1024.0
            ))
        );
    }
    if let Some(dir) = &args.plot {
        let files = plot::write_all(dir, &report, &runs)
            .map_err(|e| anyhow::anyhow!("writing plots into {}: {e}", dir.display()))?;
        for f in files {
            eprintln!("[simulate] wrote {}", f.display());
        }
    }
    if args.recommend {
        let rec = recommend::recommend(&cfg, &|step| eprintln!("[recommend] {step}"));
        match rec {
            Some(r) => println!(
                "recommendation for {} agents ({:?}): {} pods, maxReconnectsPerSecond {:.0} — 0 false offline, balanced {} ({} runs)",
                cfg.agents,
                cfg.scenario,
                r.pods,
                r.max_reconnects_per_second,
                r.time_to_balance_seconds
                    .map_or("never".into(), |t| format!("{t:.0} s after the event")),
                r.runs
            ),
            None => println!("no pod count up to 1000 keeps false offline at 0 for this scenario"),
        }
    }
    Ok(())
}

/// The process's peak resident memory in KiB (Linux `VmHWM`), if the platform says.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
