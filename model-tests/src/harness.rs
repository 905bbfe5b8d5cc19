//! The model runner shared by every test file.
//!
//! * Every loom knob is set in code ([`Model::builder`]), so the environment variables loom
//!   itself reads (`LOOM_MAX_PREEMPTIONS`, `LOOM_MAX_BRANCHES`, ...) cannot change what CI
//!   checks. The only knobs read from the environment are ours, and they only make a run
//!   deeper: `MODEL_DEEP=1` switches every bounded model to its deep bound, and
//!   `MODEL_PREEMPTION_BOUND=<n>|none` overrides the bound of every bounded model.
//! * Executions are counted with a std atomic bumped at the start of each iteration.
//! * Exploration windows: a model built with [`Model::windowed`] is explored only between
//!   [`explore_from_here`] and [`explore_until_here`]; the set-up before (starting vCPU
//!   threads and letting them settle in guest mode) and the tear-down after run on loom's
//!   default schedule, once per explored state. This is what keeps 3- and 4-thread models of
//!   the whole core tractable. `MODEL_EXPLORE_ALL=1` explores set-up and tear-down too.
//! * [`Model::check`] must pass; [`Model::check_fails`] is a negative control: the model
//!   must make loom fail, with a message that names the expected failure.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Branch budget of the models that must pass: a few times the longest execution.
pub const DEFAULT_MAX_BRANCHES: usize = 5_000;

/// Branch budget of the negative controls: small, so a livelock is reported quickly.
pub const CONTROL_MAX_BRANCHES: usize = 1_000;

/// A generous timeout for the core's bounded waits. Under loom a deadline never passes.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Timed waits (pause's re-kick slices, stop's wait) that may time out in one execution
/// before waits block until notified (`vcpu_sync::sim::model_time`). Two lets every model
/// explore a re-kick round racing the acknowledgements, and a pauser timing out while
/// another pauser or a stopper waits too.
pub const DEFAULT_TIMEOUTS: usize = 2;

/// One model: its name, its thread budget and its exploration bounds.
#[derive(Clone, Debug)]
pub struct Model {
    /// Printed in the results line.
    pub name: &'static str,
    /// Threads alive at once, the main thread included (loom's limit is `loom::MAX_THREADS`).
    pub threads: usize,
    /// `None` explores every interleaving (up to DPOR equivalence).
    pub preemption_bound: Option<usize>,
    /// Longest execution (in scheduling decisions) before loom calls it a livelock.
    pub max_branches: usize,
    /// Explore only inside [`explore_from_here`] .. [`explore_until_here`].
    pub window: bool,
    /// Timed waits that may time out per execution (`None`: all of them).
    pub timeouts: Option<usize>,
}

/// What a finished model run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Executions loom ran (counted by the model itself).
    pub interleavings: usize,
    /// Wall time of the whole exploration.
    pub elapsed: Duration,
}

fn windows_enabled() -> bool {
    !std::env::var("MODEL_EXPLORE_ALL").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// Start of a windowed model's explored part (no-op when everything is explored).
pub fn explore_from_here() {
    if windows_enabled() {
        loom::explore();
    }
}

/// End of a windowed model's explored part (no-op when everything is explored).
pub fn explore_until_here() {
    if windows_enabled() {
        loom::stop_exploring();
    }
}

fn deep() -> bool {
    std::env::var("MODEL_DEEP").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// `<n>` or `none` from environment variable `name`, if set (`none`: no limit).
fn env_limit(name: &str) -> Option<Option<usize>> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if v.eq_ignore_ascii_case("none") {
        return Some(None);
    }
    match v.parse() {
        Ok(n) => Some(Some(n)),
        Err(_) => panic!("{name} must be a number or `none`, got {v:?}"),
    }
}

fn bound_override() -> Option<Option<usize>> {
    env_limit("MODEL_PREEMPTION_BOUND")
}

fn timeouts_override() -> Option<Option<usize>> {
    env_limit("MODEL_TIMEOUTS")
}

fn fmt_timeouts(t: Option<usize>) -> String {
    match t {
        Some(n) => n.to_string(),
        None => "unlimited".to_string(),
    }
}

fn fmt_bound(b: Option<usize>) -> String {
    match b {
        Some(n) => n.to_string(),
        None => "none (exhaustive)".to_string(),
    }
}

impl Model {
    /// An exhaustive model (no preemption bound) with the default branch budget.
    pub fn new(name: &'static str, threads: usize) -> Model {
        assert!(
            threads <= loom::MAX_THREADS,
            "{name}: {threads} threads > loom::MAX_THREADS"
        );
        Model {
            name,
            threads,
            preemption_bound: None,
            max_branches: DEFAULT_MAX_BRANCHES,
            window: false,
            timeouts: timeouts_override().unwrap_or(Some(DEFAULT_TIMEOUTS)),
        }
    }

    /// Explores only the window the model marks with [`explore_from_here`] and
    /// [`explore_until_here`] (unless `MODEL_EXPLORE_ALL=1`).
    pub fn windowed(mut self) -> Model {
        self.window = true;
        self
    }

    /// Bounds preemptions to `ci` by default and to `deep` under `MODEL_DEEP=1`;
    /// `MODEL_PREEMPTION_BOUND` overrides both.
    pub fn bounded(mut self, ci: usize, deep_bound: Option<usize>) -> Model {
        self.preemption_bound = match bound_override() {
            Some(b) => b,
            None if deep() => deep_bound,
            None => Some(ci),
        };
        self
    }

    /// A fixed preemption bound that no environment variable changes (negative controls:
    /// the bound that exposes the bug is part of the control).
    pub fn fixed_bound(mut self, b: Option<usize>) -> Model {
        self.preemption_bound = b;
        self
    }

    /// Sets how many timed waits may time out per execution (`MODEL_TIMEOUTS` overrides).
    pub fn timeouts(mut self, n: usize) -> Model {
        self.timeouts = timeouts_override().unwrap_or(Some(n));
        self
    }

    /// Lets every timed wait time out (waits never block): for models whose progress
    /// depends on a timeout firing again and again (a kick that can be lost). Fixed: no
    /// environment variable changes it.
    pub fn unlimited_timeouts(mut self) -> Model {
        self.timeouts = None;
        self
    }

    /// Sets the branch budget.
    pub fn max_branches(mut self, n: usize) -> Model {
        self.max_branches = n;
        self
    }

    /// A loom builder with every field set here, none left to loom's environment variables.
    pub fn builder(&self) -> loom::model::Builder {
        let mut b = loom::model::Builder::new();
        b.max_threads = self.threads;
        b.max_branches = self.max_branches;
        b.max_permutations = None;
        b.max_duration = None;
        b.preemption_bound = self.preemption_bound;
        b.checkpoint_file = None;
        b.checkpoint_interval = 100_000;
        b.expect_explicit_explore = self.window && windows_enabled();
        b.location = std::env::var("MODEL_LOCATIONS").is_ok();
        b.log = false;
        b
    }

    fn header(&self) -> String {
        format!(
            "model {:<34} threads={} (incl. main)  preemption_bound={}  timeouts={}  max_branches={}  explored={}",
            self.name,
            self.threads,
            fmt_bound(self.preemption_bound),
            fmt_timeouts(self.timeouts),
            self.max_branches,
            self.scope()
        )
    }

    fn scope(&self) -> &'static str {
        if self.window && windows_enabled() {
            "window"
        } else {
            "whole"
        }
    }

    fn counted<F>(&self, f: F) -> (Arc<AtomicUsize>, impl Fn() + Sync + Send + 'static)
    where
        F: Fn() + Sync + Send + 'static,
    {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let timeouts = self.timeouts;
        (count, move || {
            c.fetch_add(1, Ordering::Relaxed);
            vcpu_sync::sim::model_time::set_timeouts(timeouts);
            f();
        })
    }

    /// Explores the model; panics (failing the test) if loom finds a problem.
    pub fn check<F>(&self, f: F) -> Outcome
    where
        F: Fn() + Sync + Send + 'static,
    {
        println!("{} ...", self.header());
        let (count, f) = self.counted(f);
        let start = Instant::now();
        self.builder().check(f);
        let out = Outcome {
            interleavings: count.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        };
        println!(
            "RESULT {:<34} threads={} bound={} timeouts={} explored={} interleavings={} time={:.2}s PASS",
            self.name,
            self.threads,
            fmt_bound(self.preemption_bound),
            fmt_timeouts(self.timeouts),
            self.scope(),
            out.interleavings,
            out.elapsed.as_secs_f64()
        );
        out
    }

    /// A negative control: loom must fail, and the failure message must contain one of
    /// `expected` (case-insensitive). Returns the message.
    ///
    /// `test` must be the name of the `#[test]` function calling this: the model runs in a
    /// child process (this test binary re-run with `--exact test`), because after loom
    /// reports a failure the threads it abandoned are unwound later and would disturb the
    /// next model in the same process.
    pub fn check_fails<F>(&self, test: &str, expected: &[&str], f: F) -> String
    where
        F: Fn() + Sync + Send + 'static,
    {
        if std::env::var(CHILD_ENV).is_ok_and(|t| t == test) {
            return self.check_fails_here(expected, f);
        }
        let exe = std::env::current_exe().expect("test binary path");
        let start = Instant::now();
        let out = std::process::Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, test)
            .output()
            .expect("spawn the negative control's child process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stdout.lines() {
            if let Some(i) = line.find("model ") {
                if line[i..].starts_with("model ") && line.contains("negative control") {
                    println!("{}", &line[i..]);
                    continue;
                }
            }
            if line.starts_with("  loom reported:") || line.starts_with("RESULT ") {
                println!("{line}");
            }
        }
        assert!(
            out.status.success() && stdout.contains("EXPECTED-FAIL"),
            "negative control {} did not fail as expected (child exit {:?}, {:.1}s)\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            self.name,
            out.status.code(),
            start.elapsed().as_secs_f64()
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("  loom reported: "))
            .unwrap_or_default()
            .to_string()
    }

    fn check_fails_here<F>(&self, expected: &[&str], f: F) -> String
    where
        F: Fn() + Sync + Send + 'static,
    {
        println!(
            "{} ... (negative control: loom must report a failure)",
            self.header()
        );
        let (count, f) = self.counted(f);
        // Capture the first panic's message and location; silence the default hook's
        // output (loom's report is printed below, once; the unwinding of the abandoned
        // threads that follows it panics too, with no useful message).
        let first: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let sink = first.clone();
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let loc = info
                    .location()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default();
                *slot = Some(format!("{}{loc}", payload_str(info.payload())));
            }
        }));
        let start = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| self.builder().check(f)));
        let elapsed = start.elapsed();
        panic::set_hook(prev);
        let n = count.load(Ordering::Relaxed);
        let payload = match result {
            Ok(()) => panic!(
                "negative control {} PASSED in {n} interleavings ({:.2}s): loom did not find the bug it exists to find",
                self.name,
                elapsed.as_secs_f64()
            ),
            Err(p) => payload_str(&*p),
        };
        let msg = first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(payload);
        let lower = msg.to_lowercase();
        assert!(
            expected.iter().any(|e| lower.contains(&e.to_lowercase())),
            "negative control {} failed, but not as expected (wanted one of {expected:?}): {msg}",
            self.name
        );
        println!("  loom reported: {}", shorten(&msg.replace('\n', " "), 600));
        println!(
            "RESULT {:<34} threads={} bound={} timeouts={} explored={} interleavings={} time={:.2}s EXPECTED-FAIL (loom failed at interleaving {n})",
            self.name,
            self.threads,
            fmt_bound(self.preemption_bound),
            fmt_timeouts(self.timeouts),
            self.scope(),
            n,
            elapsed.as_secs_f64()
        );
        msg
    }
}

/// Set in the child process that runs one negative control (to its test's name).
const CHILD_ENV: &str = "MODEL_CONTROL_CHILD";

fn payload_str(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &s[..end], s.len() - end)
}

/// Spins (yielding to loom) until `cond` holds. Loom reports a spin that never ends as
/// exceeding the branch budget.
pub fn spin_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        loom::thread::yield_now();
    }
}
