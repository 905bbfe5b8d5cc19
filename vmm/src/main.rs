//! `vmm`: boots a Linux kernel on KVM. Parses the command line, builds the VM, serves the
//! control API if asked, runs the VM until the guest powers off or reboots or the API asks
//! for a shutdown (exit 0) or something fails (exit 1, with a `vmm: error: ...` line on
//! stderr). SIGTERM, SIGINT and SIGHUP stop the VM like a shutdown and exit with 128 + the
//! signal number. `vmm remote ...` is the control API's client instead.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use vmm::api::{self, ApiServer, VmControl};
use vmm::cli::{self, Command, Remote};
use vmm::vm::{Outcome, Vm};
use vmm::{seccomp, signals};

/// How long `vmm remote` waits for an answer (a pause may take up to
/// [`api::PAUSE_TIMEOUT`]).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
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

/// `None` when only help was printed.
fn run() -> Result<Option<Outcome>, vmm::Error> {
    let config = match cli::parse(std::env::args_os().skip(1))? {
        Command::Help => {
            println!("{}", cli::USAGE);
            return Ok(None);
        }
        Command::Run(c) => c,
        Command::Remote(r) => return remote(&r).map(|()| None),
    };
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
    seccomp::enter(seccomp::ThreadKind::Vmm)?;
    vm.run().map(Some)
}

/// `vmm remote`: prints the response line; an `ok:false` answer is an error.
fn remote(r: &Remote) -> Result<(), vmm::Error> {
    let answer = api::request(&r.api_socket, &r.request, REMOTE_TIMEOUT)?;
    println!("{}", answer.line);
    match answer.error {
        None => Ok(()),
        Some(msg) => Err(vmm::Error::Remote(msg)),
    }
}
