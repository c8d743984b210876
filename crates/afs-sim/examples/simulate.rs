//! Runs simulated experiments and prints their rates:
//! `cargo run --release -p afs-sim --example simulate -- [RUNS] [SCENARIO...]`
//! (scenario names as in `Scenario::standard()`; all of them by default).

use afs_sim::{run_scenario, Backend, Scenario};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let names: Vec<String> = args.collect();
    for mut scenario in Scenario::standard() {
        if !names.is_empty() && !names.contains(&scenario.name) {
            continue;
        }
        // Population overrides for exploring: SIM_QUALITY_SD, SIM_ACTIVITY_SIGMA, ...
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        let p = &mut scenario.population;
        if let Some(v) = env("SIM_QUALITY_SD") {
            p.quality_sd = v;
        }
        if let Some(v) = env("SIM_ACTIVITY_SIGMA") {
            p.activity_sigma = v;
        }
        if let Some(v) = env("SIM_POSITIVE_SD") {
            p.positive_sd = v;
        }
        if std::env::var_os("SIM_LATENCY_GUARDRAIL_ONLY").is_some() {
            scenario
                .config
                .guardrails
                .retain(|g| g.metric == afs_abtest::Metric::Latency);
        }
        if let Some(m) = env("SIM_NEGATIVE_MARGIN") {
            for g in &mut scenario.config.guardrails {
                if g.metric == afs_abtest::Metric::NegativeRate {
                    g.margin = m;
                }
            }
        }
        if std::env::var_os("SIM_NEGATIVE_RATIO").is_some() {
            scenario
                .config
                .ratio_metrics
                .push(afs_abtest::Metric::NegativeRate);
        }
        let p = &mut scenario.population;
        if let Some(v) = env("SIM_HISTORY_HOURS") {
            p.history_hours = v as u32;
        }
        let start = std::time::Instant::now();
        let rates = run_scenario(&scenario, &Backend::Memory, runs, 20_260_101)?;
        println!("{rates}  ({:.1} s)", start.elapsed().as_secs_f64());
        if std::env::var_os("SIM_REASONS").is_some() {
            for o in rates
                .outcomes
                .iter()
                .filter(|o| {
                    std::env::var("SIM_REASONS").as_deref() != Ok("undecided")
                        || o.decision.is_none()
                })
                .take(12)
            {
                println!(
                    "    seed {} {:?} at {:?}: {}",
                    o.seed, o.decision, o.decided_at_hour, o.last_reason
                );
            }
        }
    }
    Ok(())
}
