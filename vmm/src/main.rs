//! `vmm`: boots a Linux kernel on KVM. Parses the command line, builds the VM, runs it
//! until the guest powers off or reboots (exit 0) or something fails (exit 1, with a
//! `vmm: error: ...` line on stderr).

use std::io::Write;
use std::process::ExitCode;
use vmm::cli::{self, Command};
use vmm::vm::{Outcome, Vm};

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
        Ok(Some(Outcome::Shutdown)) => {
            eprintln!("vmm: VM shut down");
            ExitCode::SUCCESS
        }
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
    let config = match cli::parse(std::env::args().skip(1))? {
        Command::Help => {
            println!("{}", cli::USAGE);
            return Ok(None);
        }
        Command::Run(c) => c,
    };
    let vm = Vm::new(&config)?;
    vm.start()?;
    vm.run().map(Some)
}
