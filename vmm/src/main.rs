//! `vmm`: boots a Linux kernel on KVM. Parses the command line, builds the VM, serves the
//! control API if asked, runs the VM until the guest powers off or reboots or the API asks
//! for a shutdown (exit 0) or something fails (exit 1, with a `vmm: error: ...` line on
//! stderr). SIGTERM, SIGINT and SIGHUP stop the VM like a shutdown and exit with 128 + the
//! signal number. `vmm remote ...` is the control API's client instead.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use vmm::api::{self, ApiServer, ClientError, ServerError, VmControl};
use vmm::cli::{self, CliError, Command, LogOptions, Remote};
use vmm::config::SerialConfig;
use vmm::terminal;
use vmm::vm::{Outcome, Vm};
use vmm::{seccomp, signals};

/// Why the binary exits 1: one variant per layer, each carrying that layer's error.
#[derive(Debug, thiserror::Error)]
enum MainError {
    /// Bad command line.
    #[error(transparent)]
    Cli(#[from] CliError),
    /// `--log-file` could not be opened.
    #[error("--log-file: cannot open {}: {source}", path.display())]
    LogFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The VM could not be built or failed while running.
    #[error(transparent)]
    Vm(#[from] vmm::vm::Error),
    /// The control API socket could not be set up.
    #[error("control API: {0}")]
    Api(#[from] ServerError),
    /// `vmm remote` could not get an answer.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The termination-signal handler could not be set up.
    #[error(transparent)]
    Signals(#[from] vmm::signals::SignalError),
    /// The seccomp jail could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] vmm::seccomp::SeccompError),
    /// `vmm remote` got an error answer (its message).
    #[error("{0}")]
    Remote(String),
}

/// How long `vmm remote` waits for an answer (a pause may take up to
/// [`api::PAUSE_TIMEOUT`]).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let code = match run() {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(Outcome::PowerOff)) => {
            eprintln!("vmm: guest powered off");
            ExitCode::SUCCESS
        }
        Ok(Some(Outcome::Reboot)) => {
            eprintln!("vmm: guest requested a reboot; exiting");
            ExitCode::SUCCESS
        }
        Ok(Some(Outcome::Shutdown)) => match signals::caught() {
            Some(sig) => {
                eprintln!("vmm: stopped by {}; VM shut down", signals::name(sig));
                ExitCode::from(signals::exit_status(sig))
            }
            None => {
                eprintln!("vmm: VM shut down");
                ExitCode::SUCCESS
            }
        },
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::FAILURE
        }
    };
    let _ = std::io::stdout().flush();
    code
}

/// Logging: the VMM's own progress at info by default (one line per start-up phase and per
/// control action), everything else at warn; `-v` debug, `-vv` trace; `RUST_LOG` wins.
fn init_logging(opts: &LogOptions) -> Result<(), MainError> {
    let default = match opts.verbosity {
        0 => "warn,vmm=info",
        1 => "debug",
        _ => "trace",
    };
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    b.format_timestamp_millis();
    if let Some(path) = &opts.file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| MainError::LogFile {
                path: path.clone(),
                source,
            })?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    // Only fails if a logger is already set, which nothing else here does.
    let _ = b.try_init();
    Ok(())
}

/// `None` when only help was printed or a remote request succeeded.
fn run() -> Result<Option<Outcome>, MainError> {
    let (config, log) = match cli::parse(std::env::args_os().skip(1))? {
        Command::Print(text) => {
            print!("{text}");
            return Ok(None);
        }
        Command::Run(c, log) => (c, log),
        Command::Remote(r) => {
            init_logging(&LogOptions {
                verbosity: 0,
                file: None,
            })?;
            return remote(&r).map(|()| None);
        }
    };
    init_logging(&log)?;
    // Before any thread starts: each installs its filter (vmm::seccomp) once set up, and
    // inherits the blocked termination signals (only the signal thread takes them).
    seccomp::configure(config.seccomp);
    signals::block();
    let vm = Arc::new(Vm::new(&config)?);
    // From here on SIGTERM/SIGINT/SIGHUP stop the VM through the main loop (so the socket
    // below is removed); one that came earlier was held blocked until now.
    signals::watch(vm.event_sender())?;
    // Before the vCPUs start, so a client never sees a half-started VM; dropped (socket
    // file removed) when this function returns, whatever the outcome.
    let _server = match vm.api_socket() {
        Some(path) => Some(ApiServer::start(
            path,
            Arc::new(VmControl::new(vm.clone())),
        )?),
        None => None,
    };
    vm.start()?;
    // The terminal is the guest's console; restored when this function returns.
    let _raw = if config.serial == SerialConfig::Tty && terminal::stdin_is_ours() {
        let raw = terminal::RawTerminal::enter();
        if let Err(e) = terminal::forward_stdin(vm.clone(), vm.event_sender(), raw.is_raw()) {
            log::warn!("no console input: cannot start the stdin thread: {e}");
        }
        Some(raw)
    } else {
        None
    };
    seccomp::enter(seccomp::ThreadKind::Vmm)?;
    Ok(Some(vm.run()?))
}

/// `vmm remote`: prints the answer's body (if any); an error answer is an error.
fn remote(r: &Remote) -> Result<(), MainError> {
    let answer = api::client::request(&r.api_socket, &r.request, REMOTE_TIMEOUT)?;
    if !answer.text.is_empty() {
        println!("{}", answer.text);
    }
    match answer.error() {
        None => Ok(()),
        Some(msg) => Err(MainError::Remote(msg)),
    }
}
