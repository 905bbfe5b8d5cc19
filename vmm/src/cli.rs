//! The command line, on `clap` (derive) with Cloud Hypervisor's option syntax
//! (`--cpus boot=2,max=4`, `--memory size=512M`, `--api-socket path=...` or a bare path).
//! It only turns arguments into a [`VmConfig`] (plus the process's logging options) or a
//! control request for `vmm remote`; every malformed input is a [`CliError`] with a
//! one-line message, never a panic or an exit inside the library. Paths stay `OsString`s
//! (non-UTF-8 paths work).

use crate::api::Request;
use crate::config::{SerialConfig, VmConfig, DEFAULT_MEMORY};
use crate::seccomp::SeccompMode;
use clap::{Args, Parser, Subcommand};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Boots a Linux kernel (bzImage or ELF vmlinux) on KVM.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Control a running vmm with `vmm remote --api-socket PATH COMMAND` or any HTTP \
                  client on the socket, e.g.\n  curl --unix-socket PATH -X PUT \
                  http://localhost/api/v1/vm.pause\n\nRUST_LOG (e.g. RUST_LOG=debug) overrides -v."
)]
struct Cli {
    #[command(subcommand)]
    remote: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Kernel image (bzImage or uncompressed ELF vmlinux).
    #[arg(long, value_name = "PATH", required = true)]
    kernel: Option<PathBuf>,
    /// Initramfs/initrd image, loaded near the top of low RAM.
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Appended to the default kernel command line.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// vCPUs started at boot and the most the guest may ever have (default boot=1; max
    /// defaults to boot).
    #[arg(long, value_name = "boot=N[,max=M]", value_parser = parse_cpus)]
    cpus: Option<Cpus>,
    /// Guest RAM, with an optional K/M/G suffix (default 512M; at least 128M; above 3G the
    /// rest is mapped above 4 GiB).
    #[arg(long, value_name = "size=SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
    /// Serve the control API (HTTP, Cloud Hypervisor's endpoints) on this unix socket
    /// (mode 0600): `path=PATH` or a bare PATH.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<OsString>,
    /// The guest's serial console: this terminal, off, or appended to a file.
    #[arg(long, value_name = "tty|off|file=PATH", default_value = "tty")]
    serial: OsString,
    /// seccomp filters per thread kind: true (a forbidden syscall kills the VMM), log
    /// (allowed, logged by the kernel) or false (none).
    #[arg(long, value_name = "true|false|log", default_value = "true", value_parser = parse_seccomp)]
    seccomp: SeccompMode,
    /// Write the log to this file instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// More log output: -v debug, -vv trace (default: info for the VMM, warn for the rest).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Send one request to a running vmm's API socket (like ch-remote); prints the answer
    /// body, exits 1 on an error answer.
    Remote(RemoteArgs),
}

#[derive(Debug, Args)]
struct RemoteArgs {
    /// The running vmm's --api-socket.
    #[arg(long, value_name = "PATH", global = true)]
    api_socket: Option<OsString>,
    #[command(subcommand)]
    command: RemoteCommand,
}

#[derive(Debug, Subcommand)]
enum RemoteCommand {
    /// GET vmm.ping: the VMM's version and pid.
    Ping,
    /// GET vm.info: vCPU states and counters.
    Info,
    /// PUT vm.pause: pause every vCPU.
    Pause,
    /// PUT vm.resume: end the pause.
    Resume,
    /// PUT vm.resize: hot-add or hot-remove vCPUs (1..=max).
    Resize {
        /// The vCPU count wanted.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        cpus: u64,
    },
    /// PUT vm.shutdown: stop the VM (the VMM exits).
    Shutdown,
    /// PUT vmm.shutdown: stop the VM and the VMM.
    ShutdownVmm,
}

/// `--cpus boot=N,max=M`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    /// vCPUs at boot.
    pub boot: usize,
    /// Most vCPUs ever.
    pub max: usize,
}

/// How the process logs (not part of the VM's config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// Number of `-v`.
    pub verbosity: u8,
    /// `--log-file`.
    pub file: Option<PathBuf>,
}

/// What the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print this text (help or version) on stdout and exit successfully.
    Print(String),
    /// Boot a VM.
    Run(VmConfig, LogOptions),
    /// Send one control request to a running VMM.
    Remote(Remote),
}

/// `vmm remote ...`: one request to the control socket at `api_socket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The running VMM's `--api-socket`.
    pub api_socket: PathBuf,
    /// What to send.
    pub request: Request,
}

/// Everything that can be wrong with a command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// What clap found wrong (unknown or missing argument, bad value), on one line.
    #[error("{0}")]
    Usage(String),
    /// A `key=value` list with an unknown key.
    #[error("{flag}: unknown key '{key}' (expected {expected})")]
    UnknownKey {
        /// The flag being parsed.
        flag: &'static str,
        /// The offending key.
        key: String,
        /// The keys the flag accepts.
        expected: &'static str,
    },
    /// A `key=value` item without `=`.
    #[error("{flag}: expected key=value, got '{item}'")]
    NotKeyValue {
        /// The flag being parsed.
        flag: &'static str,
        /// The offending item.
        item: String,
    },
    /// A key given twice in one list.
    #[error("{flag}: {key} given more than once")]
    DuplicateKey {
        /// The flag being parsed.
        flag: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A vCPU count that is not a number.
    #[error("--cpus: '{value}' is not a valid number for {key}")]
    BadNumber {
        /// `boot` or `max`.
        key: &'static str,
        /// The text given.
        value: String,
    },
    /// `boot=0`.
    #[error("--cpus: boot must be at least 1")]
    ZeroBootVcpus,
    /// `boot > max`.
    #[error("--cpus: boot={boot} is larger than max={max}")]
    BootAboveMax {
        /// Boot vCPUs asked for.
        boot: usize,
        /// Maximum asked for.
        max: usize,
    },
    /// `max` given without `boot`.
    #[error("--cpus: boot=N is required")]
    MissingBoot,
    /// `--memory` without `size=`.
    #[error("--memory: size=SIZE is required")]
    MissingSize,
    /// An unparsable size.
    #[error("--memory: '{0}' is not a valid size (examples: 512M, 1G, 262144K, 536870912)")]
    BadSize(String),
    /// `--serial` that is not tty, off or file=PATH.
    #[error("--serial: expected tty, off or file=PATH, got '{0}'")]
    BadSerial(String),
    /// `--api-socket path=` or an empty path.
    #[error("{0}: the path is empty")]
    EmptyPath(&'static str),
    /// `vmm remote` without `--api-socket`.
    #[error("remote: --api-socket PATH is required")]
    RemoteNeedsSocket,
}

/// Parses `args` (without the program name).
pub fn parse<I, S>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let argv = std::iter::once(OsString::from("vmm")).chain(args.into_iter().map(Into::into));
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    Ok(Command::Print(e.render().to_string()))
                }
                _ => Err(CliError::Usage(one_line(&e.render().to_string()))),
            };
        }
    };
    if let Some(Sub::Remote(r)) = cli.remote {
        return remote(r);
    }
    let a = cli.run;
    let Cpus { boot, max } = a.cpus.unwrap_or(Cpus { boot: 1, max: 1 });
    let config = VmConfig {
        // Required unless a subcommand is given, and there is none here.
        kernel: a.kernel.ok_or_else(|| {
            CliError::Usage(
                "the following required argument was not provided: --kernel <PATH>".into(),
            )
        })?,
        initramfs: a.initramfs,
        cmdline: a.cmdline,
        boot_vcpus: boot,
        max_vcpus: max,
        memory_size: a.memory.unwrap_or(DEFAULT_MEMORY),
        api_socket: a.api_socket.as_deref().map(parse_api_socket).transpose()?,
        serial: parse_serial(&a.serial)?,
        aps_at_entry: false,
        seccomp: a.seccomp,
    };
    Ok(Command::Run(
        config,
        LogOptions {
            verbosity: a.verbose,
            file: a.log_file,
        },
    ))
}

fn remote(r: RemoteArgs) -> Result<Command, CliError> {
    let api_socket = r
        .api_socket
        .as_deref()
        .map(parse_api_socket)
        .transpose()?
        .ok_or(CliError::RemoteNeedsSocket)?;
    let request = match r.command {
        RemoteCommand::Ping => Request::Ping,
        RemoteCommand::Info => Request::Info,
        RemoteCommand::Pause => Request::Pause,
        RemoteCommand::Resume => Request::Resume,
        RemoteCommand::Resize { cpus } => Request::Resize {
            desired_vcpus: usize::try_from(cpus).unwrap_or(usize::MAX),
        },
        RemoteCommand::Shutdown => Request::VmShutdown,
        RemoteCommand::ShutdownVmm => Request::VmmShutdown,
    };
    Ok(Command::Remote(Remote {
        api_socket,
        request,
    }))
}

/// clap's multi-line error (message, usage, hint) as one line without the `error:` tag.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
        + " (see --help)"
}

/// `path=PATH` or a bare `PATH` (bytes, so any path works).
fn parse_api_socket(v: &OsStr) -> Result<PathBuf, CliError> {
    let bytes = v.as_bytes();
    let path = bytes.strip_prefix(b"path=").unwrap_or(bytes);
    if path.is_empty() {
        return Err(CliError::EmptyPath("--api-socket"));
    }
    Ok(PathBuf::from(OsStr::from_bytes(path)))
}

/// `--seccomp`: true, false or log.
fn parse_seccomp(text: &str) -> Result<SeccompMode, String> {
    SeccompMode::parse(text).ok_or_else(|| format!("expected true, false or log, got '{text}'"))
}

/// `tty`, `off` or `file=PATH`.
fn parse_serial(v: &OsStr) -> Result<SerialConfig, CliError> {
    match v.as_bytes() {
        b"tty" => Ok(SerialConfig::Tty),
        b"off" => Ok(SerialConfig::Off),
        b"file=" => Err(CliError::EmptyPath("--serial file=")),
        b => match b.strip_prefix(b"file=") {
            Some(p) => Ok(SerialConfig::File(PathBuf::from(OsStr::from_bytes(p)))),
            None => Err(CliError::BadSerial(v.to_string_lossy().into_owned())),
        },
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    flag: &'static str,
    key: &'static str,
) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::DuplicateKey { flag, key });
    }
    *slot = Some(value);
    Ok(())
}

/// Splits `a=1,b=2` into pairs, rejecting items without `=`.
fn key_values<'a>(
    flag: &'static str,
    value: &'a str,
) -> impl Iterator<Item = Result<(&'a str, &'a str), CliError>> {
    value.split(',').filter(|s| !s.is_empty()).map(move |item| {
        item.split_once('=').ok_or_else(|| CliError::NotKeyValue {
            flag,
            item: item.to_string(),
        })
    })
}

/// Parses `boot=N[,max=M]`; `max` defaults to `boot`.
pub fn parse_cpus(value: &str) -> Result<Cpus, CliError> {
    let mut boot = None;
    let mut max = None;
    for kv in key_values("--cpus", value) {
        let (k, v) = kv?;
        let key: &'static str = match k {
            "boot" => "boot",
            "max" => "max",
            _ => {
                return Err(CliError::UnknownKey {
                    flag: "--cpus",
                    key: k.to_string(),
                    expected: "boot, max",
                })
            }
        };
        let n: usize = v.trim().parse().map_err(|_| CliError::BadNumber {
            key,
            value: v.to_string(),
        })?;
        let slot = if key == "boot" { &mut boot } else { &mut max };
        set_once(slot, n, "--cpus", key)?;
    }
    let boot = boot.ok_or(CliError::MissingBoot)?;
    let max = max.unwrap_or(boot);
    if boot == 0 {
        return Err(CliError::ZeroBootVcpus);
    }
    if boot > max {
        return Err(CliError::BootAboveMax { boot, max });
    }
    Ok(Cpus { boot, max })
}

/// Parses `size=SIZE` into bytes.
pub fn parse_memory(value: &str) -> Result<u64, CliError> {
    let mut size = None;
    for kv in key_values("--memory", value) {
        let (k, v) = kv?;
        if k != "size" {
            return Err(CliError::UnknownKey {
                flag: "--memory",
                key: k.to_string(),
                expected: "size",
            });
        }
        set_once(&mut size, parse_size(v)?, "--memory", "size")?;
    }
    size.ok_or(CliError::MissingSize)
}

/// Parses a byte count with an optional K/M/G suffix (binary units, case-insensitive,
/// an optional trailing `B`/`iB` is accepted: `512M`, `512MiB`, `1g`).
pub fn parse_size(text: &str) -> Result<u64, CliError> {
    let bad = || CliError::BadSize(text.to_string());
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 10),
        Some((i, 'm')) => (&t[..i], 20),
        Some((i, 'g')) => (&t[..i], 30),
        Some(_) => (t, 0),
        None => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<VmConfig, CliError> {
        match parse(args.iter().copied())? {
            Command::Run(c, _) => Ok(c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["--kernel", "k"]).unwrap();
        assert_eq!((c.boot_vcpus, c.max_vcpus), (1, 1));
        assert_eq!(c.memory_size, 512 << 20);
        assert_eq!(c.initramfs, None);
        assert_eq!(c.serial, SerialConfig::Tty);
        assert_eq!(c.api_socket, None);
    }

    #[test]
    fn full() {
        let c = run(&[
            "--kernel=k",
            "--initramfs",
            "i",
            "--cmdline",
            "quiet a=b",
            "--cpus",
            "boot=2,max=4",
            "--memory",
            "size=1G",
            "--api-socket",
            "/tmp/s",
            "--serial",
            "file=/tmp/console",
        ])
        .unwrap();
        assert_eq!((c.boot_vcpus, c.max_vcpus), (2, 4));
        assert_eq!(c.memory_size, 1 << 30);
        assert_eq!(c.cmdline.as_deref(), Some("quiet a=b"));
        assert_eq!(c.api_socket, Some(PathBuf::from("/tmp/s")));
        assert_eq!(c.serial, SerialConfig::File("/tmp/console".into()));
        let c = run(&[
            "--kernel",
            "k",
            "--api-socket",
            "path=/tmp/t",
            "--serial",
            "off",
        ])
        .unwrap();
        assert_eq!(c.api_socket, Some(PathBuf::from("/tmp/t")));
        assert_eq!(c.serial, SerialConfig::Off);
    }

    #[test]
    fn logging_options() {
        match parse(["--kernel", "k", "-vv", "--log-file", "/tmp/l"]).unwrap() {
            Command::Run(_, log) => {
                assert_eq!(log.verbosity, 2);
                assert_eq!(log.file, Some(PathBuf::from("/tmp/l")));
            }
            other => panic!("{other:?}"),
        }
        match parse(["--kernel", "k"]).unwrap() {
            Command::Run(_, log) => assert_eq!(log.verbosity, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_utf8_paths() {
        use std::os::unix::ffi::OsStringExt;
        let k = OsString::from_vec(b"/tmp/k\xff".to_vec());
        let s = OsString::from_vec(b"path=/tmp/s\xfe".to_vec());
        let f = OsString::from_vec(b"file=/tmp/c\xfd".to_vec());
        let args = [
            OsString::from("--kernel"),
            k.clone(),
            "--api-socket".into(),
            s,
            "--serial".into(),
            f,
        ];
        match parse(args).unwrap() {
            Command::Run(c, _) => {
                assert_eq!(c.kernel, PathBuf::from(k));
                assert_eq!(c.api_socket.unwrap().as_os_str().as_bytes(), b"/tmp/s\xfe");
                assert_eq!(
                    c.serial,
                    SerialConfig::File(PathBuf::from(OsString::from_vec(b"/tmp/c\xfd".to_vec())))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cpus() {
        let c = |boot, max| Ok(Cpus { boot, max });
        assert_eq!(parse_cpus("boot=3"), c(3, 3));
        assert_eq!(parse_cpus("max=4,boot=1"), c(1, 4));
        assert_eq!(parse_cpus("boot=0,max=4"), Err(CliError::ZeroBootVcpus));
        assert!(matches!(
            parse_cpus("boot=5,max=4"),
            Err(CliError::BootAboveMax { .. })
        ));
        assert!(matches!(
            parse_cpus("boot=x"),
            Err(CliError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_cpus("boot=1,foo=2"),
            Err(CliError::UnknownKey { .. })
        ));
        assert!(matches!(
            parse_cpus("boot=1,boot=2"),
            Err(CliError::DuplicateKey { .. })
        ));
        assert_eq!(parse_cpus("max=4"), Err(CliError::MissingBoot));
        assert!(matches!(
            parse_cpus("boot=99999999999999999999999"),
            Err(CliError::BadNumber { .. })
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in [
            "",
            "M",
            "garbage",
            "-1M",
            "1.5G",
            "1T",
            "99999999999999999999G",
            "ö",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_memory("size=1M"), Ok(1 << 20));
        assert_eq!(
            parse_memory("garbage"),
            Err(CliError::NotKeyValue {
                flag: "--memory",
                item: "garbage".into()
            })
        );
    }

    fn usage_err(args: &[&str]) -> String {
        match parse(args.iter().copied()) {
            Err(CliError::Usage(m)) => m,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn errors() {
        assert!(usage_err(&[]).contains("--kernel"));
        assert!(usage_err(&["--kernel"]).contains("--kernel"));
        assert!(usage_err(&["--bogus"]).contains("--bogus"));
        assert!(usage_err(&["--kernel", "a", "--kernel", "b"]).contains("--kernel"));
        let m = usage_err(&["--kernel", "k", "--cpus", "boot=4,max=2"]);
        assert!(m.contains("boot=4 is larger than max=2"), "{m}");
        assert!(!m.contains('\n'), "{m}");
        assert_eq!(
            parse(["--kernel", "k", "--serial", "pty"]),
            Err(CliError::BadSerial("pty".into()))
        );
        assert!(CliError::BadSerial("pty".into())
            .to_string()
            .contains("tty, off or file=PATH"));
        assert!(matches!(
            parse(["--kernel", "k", "--api-socket", "path="]),
            Err(CliError::EmptyPath(_))
        ));
        assert!(matches!(parse(["--help"]), Ok(Command::Print(t)) if t.contains("--kernel")));
        assert!(
            matches!(parse(["--version"]), Ok(Command::Print(t)) if t.contains(env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn remote() {
        let r = |args: &[&str]| parse(args.iter().copied());
        let remote = |path: &str, request| {
            Ok(Command::Remote(Remote {
                api_socket: PathBuf::from(path),
                request,
            }))
        };
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "pause"]),
            remote("/s", Request::Pause)
        );
        assert_eq!(
            r(&["remote", "info", "--api-socket=/s"]),
            remote("/s", Request::Info)
        );
        assert_eq!(
            r(&["remote", "--api-socket", "path=/s", "ping"]),
            remote("/s", Request::Ping)
        );
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "resize", "--cpus", "3"]),
            remote("/s", Request::Resize { desired_vcpus: 3 })
        );
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "shutdown"]),
            remote("/s", Request::VmShutdown)
        );
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "shutdown-vmm"]),
            remote("/s", Request::VmmShutdown)
        );
        assert_eq!(r(&["remote", "pause"]), Err(CliError::RemoteNeedsSocket));
        assert!(usage_err(&["remote", "--api-socket", "/s"]).contains("subcommand"));
        assert!(usage_err(&["remote", "--api-socket", "/s", "resize"]).contains("--cpus"));
        assert!(
            usage_err(&["remote", "--api-socket", "/s", "pause", "--cpus", "2"]).contains("--cpus")
        );
        for bad in ["0", "-1", "x", ""] {
            let m = usage_err(&["remote", "--api-socket", "/s", "resize", "--cpus", bad]);
            // clap reads "-1" as an unknown flag, the others as a bad --cpus value.
            assert!(
                m.contains("--cpus") || m.contains(&format!("'{bad}'")),
                "{bad}: {m}"
            );
        }
        assert!(usage_err(&["remote", "--api-socket", "/s", "pause", "resume"]).contains("resume"));
        assert!(usage_err(&["remote", "--api-socket", "/s", "reboot"]).contains("reboot"));
        assert!(usage_err(&["remote", "--api-socket"]).contains("--api-socket"));
        // `remote` only counts as the first word.
        assert!(usage_err(&["--kernel", "k", "remote"]).contains("remote"));
    }
}
