//! Command-line parsing: turns arguments into a [`VmConfig`] to boot or a control request
//! to send. Hand-rolled (the grammar is tiny) so every malformed input maps to a typed
//! [`CliError`] instead of a panic or a process exit inside a library.

use crate::api::protocol::Request;
use crate::config::{VmConfig, DEFAULT_MEMORY};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Usage text printed by `--help`.
pub const USAGE: &str = "\
Usage: vmm --kernel PATH [--initramfs PATH] [--cmdline STR]
           [--cpus boot=N[,max=M]] [--memory size=SIZE] [--api-socket PATH]
           [--seccomp true|false|log]
       vmm remote --api-socket PATH (pause | resume | resize --cpus N | info | shutdown)

Boots a Linux kernel (bzImage or ELF vmlinux) on KVM.

Options:
  --kernel PATH        kernel image (bzImage or uncompressed ELF vmlinux)
  --initramfs PATH     initramfs/initrd image loaded near the top of RAM
  --cmdline STR        appended to the default kernel command line
  --cpus boot=N,max=M  vCPUs started at boot and the most the guest may ever have
                       (default boot=1; max defaults to boot)
  --memory size=SIZE   guest RAM, with an optional K/M/G suffix (default 512M;
                       128M..3G)
  --api-socket PATH    serve the control API on this unix socket (mode 0600;
                       one JSON request per line, one JSON response per line)
  --seccomp MODE        seccomp filters per thread kind: true (default; a forbidden
                       syscall kills the VMM), log (allowed, logged by the kernel),
                       false (none)
  -h, --help           print this help

Remote control of a running vmm (prints the JSON response; exits 1 on an error):
  vmm remote --api-socket PATH pause      pause every vCPU
  vmm remote --api-socket PATH resume     end the pause
  vmm remote --api-socket PATH resize --cpus N
                                          hot-add or hot-remove vCPUs (1..=max)
  vmm remote --api-socket PATH info       vCPU states and counters
  vmm remote --api-socket PATH shutdown   stop the VM

Environment: RUST_LOG (e.g. RUST_LOG=debug) controls logging on stderr.";

/// What the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print usage and exit successfully.
    Help,
    /// Boot a VM.
    Run(VmConfig),
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
    /// An argument we do not know.
    #[error("unknown argument '{0}' (see --help)")]
    UnknownArgument(String),
    /// A flag given without its value.
    #[error("{0} needs a value (see --help)")]
    MissingValue(&'static str),
    /// A flag given twice.
    #[error("{0} given more than once")]
    Duplicate(&'static str),
    /// `--kernel` was not given.
    #[error("--kernel PATH is required (see --help)")]
    MissingKernel,
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
    /// `max` given without `boot` or similar gaps.
    #[error("--cpus: boot=N is required")]
    MissingBoot,
    /// `--memory` without `size=`.
    #[error("--memory: size=SIZE is required")]
    MissingSize,
    /// An unparsable size.
    #[error("--memory: '{0}' is not a valid size (examples: 512M, 1G, 262144K, 536870912)")]
    BadSize(String),
    /// A value that must be text is not UTF-8 (paths may be any bytes).
    #[error("{flag}: the value '{value}' is not valid UTF-8")]
    NotUtf8 {
        /// The flag.
        flag: &'static str,
        /// The value, with invalid bytes replaced.
        value: String,
    },
    /// `--seccomp` with another value than true, false or log.
    #[error("--seccomp: expected true, false or log, got '{0}'")]
    BadSeccomp(String),
    /// `vmm remote` without `--api-socket`.
    #[error("remote: --api-socket PATH is required")]
    RemoteNeedsSocket,
    /// `vmm remote` without a command.
    #[error("remote: expected one of pause, resume, resize --cpus N, info, shutdown")]
    RemoteNeedsCommand,
    /// `vmm remote` with an unknown command word or two commands.
    #[error(
        "remote: unexpected '{0}' (expected one of pause, resume, resize --cpus N, info, shutdown)"
    )]
    RemoteUnexpected(String),
    /// `resize` without `--cpus`.
    #[error("remote resize: --cpus N is required")]
    RemoteNeedsCpus,
    /// `--cpus` with a command other than `resize`.
    #[error("remote: --cpus only applies to resize")]
    RemoteCpusWithoutResize,
    /// `--cpus N` where N is not a positive number.
    #[error("remote resize: --cpus must be a number of at least 1, got '{0}'")]
    RemoteBadCpus(String),
}

/// Parses `args` (without the program name).
///
/// Arguments are `OsString`s: paths (`--kernel`, `--initramfs`, `--api-socket`) may be any
/// bytes; flags and the other values must be UTF-8 ([`CliError::NotUtf8`] otherwise).
pub fn parse<I, S>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut kernel = None;
    let mut initramfs = None;
    let mut cmdline = None;
    let mut cpus: Option<(usize, usize)> = None;
    let mut memory = None;
    let mut api_socket = None;
    let mut seccomp = None;

    let mut it = args.into_iter().map(Into::into).peekable();
    if it.peek().is_some_and(|a| a == "remote") {
        it.next();
        return parse_remote(it);
    }
    while let Some(arg) = it.next() {
        // Accept both "--flag value" and "--flag=value".
        let (flag, inline) = split_flag(&arg)?;
        let name: &'static str = match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--kernel" => "--kernel",
            "--initramfs" => "--initramfs",
            "--cmdline" => "--cmdline",
            "--cpus" => "--cpus",
            "--memory" => "--memory",
            "--api-socket" => "--api-socket",
            "--seccomp" => "--seccomp",
            _ => return Err(CliError::UnknownArgument(lossy(&arg))),
        };
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or(CliError::MissingValue(name))?,
        };
        match name {
            "--kernel" => set_once(&mut kernel, PathBuf::from(value), name)?,
            "--initramfs" => set_once(&mut initramfs, PathBuf::from(value), name)?,
            "--cmdline" => set_once(&mut cmdline, utf8(value, name)?, name)?,
            "--cpus" => set_once(&mut cpus, parse_cpus(&utf8(value, name)?)?, name)?,
            "--memory" => set_once(&mut memory, parse_memory(&utf8(value, name)?)?, name)?,
            "--seccomp" => {
                let text = utf8(value, name)?;
                let mode =
                    crate::seccomp::SeccompMode::parse(&text).ok_or(CliError::BadSeccomp(text))?;
                set_once(&mut seccomp, mode, name)?
            }
            _ => set_once(&mut api_socket, PathBuf::from(value), name)?,
        }
    }

    let (boot_vcpus, max_vcpus) = cpus.unwrap_or((1, 1));
    Ok(Command::Run(VmConfig {
        kernel: kernel.ok_or(CliError::MissingKernel)?,
        initramfs,
        cmdline,
        boot_vcpus,
        max_vcpus,
        memory_size: memory.unwrap_or(DEFAULT_MEMORY),
        api_socket,
        aps_at_entry: false,
        seccomp: seccomp.unwrap_or_default(),
    }))
}

/// Parses the arguments after `remote`.
fn parse_remote(it: impl Iterator<Item = OsString>) -> Result<Command, CliError> {
    let mut it = it;
    let mut api_socket = None;
    let mut cpus: Option<String> = None;
    let mut command: Option<String> = None;
    while let Some(arg) = it.next() {
        let (flag, inline) =
            split_flag(&arg).map_err(|_| CliError::RemoteUnexpected(lossy(&arg)))?;
        let mut value = |name: &'static str| match inline.clone() {
            Some(v) => Ok(v),
            None => it.next().ok_or(CliError::MissingValue(name)),
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--api-socket" => {
                let v = value("--api-socket")?;
                set_once(&mut api_socket, PathBuf::from(v), "--api-socket")?
            }
            "--cpus" => {
                let v = utf8(value("--cpus")?, "--cpus")?;
                set_once(&mut cpus, v, "--cpus")?
            }
            "pause" | "resume" | "resize" | "info" | "shutdown"
                if command.is_none() && inline.is_none() =>
            {
                command = Some(flag.to_string())
            }
            _ => return Err(CliError::RemoteUnexpected(lossy(&arg))),
        }
    }
    let api_socket = api_socket.ok_or(CliError::RemoteNeedsSocket)?;
    let command = command.ok_or(CliError::RemoteNeedsCommand)?;
    if cpus.is_some() && command != "resize" {
        return Err(CliError::RemoteCpusWithoutResize);
    }
    let request = match command.as_str() {
        "pause" => Request::Pause,
        "resume" => Request::Resume,
        "info" => Request::Info,
        "shutdown" => Request::Shutdown,
        _ => {
            let text = cpus.ok_or(CliError::RemoteNeedsCpus)?;
            match text.trim().parse::<usize>() {
                Ok(n) if n > 0 => Request::Resize { cpus: n },
                _ => return Err(CliError::RemoteBadCpus(text)),
            }
        }
    };
    Ok(Command::Remote(Remote {
        api_socket,
        request,
    }))
}

/// Splits `--flag=value` into the flag and its inline value (any bytes); other arguments
/// are returned whole. The flag part must be UTF-8.
fn split_flag(arg: &OsStr) -> Result<(&str, Option<OsString>), CliError> {
    let bytes = arg.as_bytes();
    let (flag, inline) = match bytes.iter().position(|&b| b == b'=') {
        Some(i) if bytes.starts_with(b"--") => (
            &bytes[..i],
            Some(OsStr::from_bytes(&bytes[i + 1..]).to_os_string()),
        ),
        _ => (bytes, None),
    };
    let flag = std::str::from_utf8(flag).map_err(|_| CliError::UnknownArgument(lossy(arg)))?;
    Ok((flag, inline))
}

/// The value of `flag` as UTF-8 text.
fn utf8(value: OsString, flag: &'static str) -> Result<String, CliError> {
    value.into_string().map_err(|v| CliError::NotUtf8 {
        flag,
        value: lossy(&v),
    })
}

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

fn set_once<T>(slot: &mut Option<T>, value: T, flag: &'static str) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::Duplicate(flag));
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

/// Parses `boot=N[,max=M]` into (boot, max); `max` defaults to `boot`.
pub fn parse_cpus(value: &str) -> Result<(usize, usize), CliError> {
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
        if key == "boot" {
            set_once(&mut boot, n, "--cpus boot")?;
        } else {
            set_once(&mut max, n, "--cpus max")?;
        }
    }
    let boot = boot.ok_or(CliError::MissingBoot)?;
    let max = max.unwrap_or(boot);
    if boot == 0 {
        return Err(CliError::ZeroBootVcpus);
    }
    if boot > max {
        return Err(CliError::BootAboveMax { boot, max });
    }
    Ok((boot, max))
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
        set_once(&mut size, parse_size(v)?, "--memory size")?;
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
            Command::Run(c) => Ok(c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["--kernel", "k"]).unwrap();
        assert_eq!((c.boot_vcpus, c.max_vcpus), (1, 1));
        assert_eq!(c.memory_size, 512 << 20);
        assert_eq!(c.initramfs, None);
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
        ])
        .unwrap();
        assert_eq!((c.boot_vcpus, c.max_vcpus), (2, 4));
        assert_eq!(c.memory_size, 1 << 30);
        assert_eq!(c.cmdline.as_deref(), Some("quiet a=b"));
        assert_eq!(c.api_socket, Some(PathBuf::from("/tmp/s")));
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("boot=3"), Ok((3, 3)));
        assert_eq!(parse_cpus("max=4,boot=1"), Ok((1, 4)));
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

    #[test]
    fn errors() {
        assert_eq!(run(&[]), Err(CliError::MissingKernel));
        assert_eq!(run(&["--kernel"]), Err(CliError::MissingValue("--kernel")));
        assert!(matches!(
            run(&["--bogus"]),
            Err(CliError::UnknownArgument(_))
        ));
        assert_eq!(
            run(&["--kernel", "a", "--kernel", "b"]),
            Err(CliError::Duplicate("--kernel"))
        );
        assert_eq!(parse(["--help"]), Ok(Command::Help));
    }

    #[test]
    fn seccomp_flag() {
        use crate::seccomp::SeccompMode;
        assert_eq!(run(&["--kernel", "k"]).unwrap().seccomp, SeccompMode::Kill);
        let mode = |v: &str| run(&["--kernel", "k", "--seccomp", v]).map(|c| c.seccomp);
        assert_eq!(mode("true"), Ok(SeccompMode::Kill));
        assert_eq!(mode("false"), Ok(SeccompMode::Off));
        assert_eq!(mode("log"), Ok(SeccompMode::Log));
        assert_eq!(mode("on"), Err(CliError::BadSeccomp("on".into())));
    }

    #[test]
    fn non_utf8_arguments() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"/tmp/\xff".to_vec());
        let args = [OsString::from("--kernel"), bad()];
        match parse(args) {
            Ok(Command::Run(c)) => assert_eq!(c.kernel.as_os_str(), bad().as_os_str()),
            other => panic!("{other:?}"),
        }
        let mut inline = OsString::from("--initramfs=");
        inline.push(bad());
        match parse([OsString::from("--kernel=k"), inline]) {
            Ok(Command::Run(c)) => assert_eq!(c.initramfs.unwrap().as_os_str(), bad()),
            other => panic!("{other:?}"),
        }
        let r = parse([OsString::from("--kernel=k"), "--cmdline".into(), bad()]);
        assert!(
            matches!(
                r,
                Err(CliError::NotUtf8 {
                    flag: "--cmdline",
                    ..
                })
            ),
            "{r:?}"
        );
        let r = parse([OsString::from("--kernel=k"), bad()]);
        assert_eq!(r, Err(CliError::UnknownArgument("/tmp/\u{fffd}".into())));
        let r = parse([
            "remote".into(),
            OsString::from("--api-socket"),
            bad(),
            "info".into(),
        ]);
        match r {
            Ok(Command::Remote(x)) => assert_eq!(x.api_socket.as_os_str(), bad()),
            other => panic!("{other:?}"),
        }
        let r = parse(["remote".into(), bad()]);
        assert!(matches!(r, Err(CliError::RemoteUnexpected(_))), "{r:?}");
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
            r(&["remote", "--api-socket", "/s", "resize", "--cpus", "3"]),
            remote("/s", Request::Resize { cpus: 3 })
        );
        assert_eq!(
            r(&["remote", "--cpus=2", "resize", "--api-socket", "/s"]),
            remote("/s", Request::Resize { cpus: 2 })
        );
        assert_eq!(r(&["remote", "pause"]), Err(CliError::RemoteNeedsSocket));
        assert_eq!(
            r(&["remote", "--api-socket", "/s"]),
            Err(CliError::RemoteNeedsCommand)
        );
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "resize"]),
            Err(CliError::RemoteNeedsCpus)
        );
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "pause", "--cpus", "2"]),
            Err(CliError::RemoteCpusWithoutResize)
        );
        for bad in ["0", "-1", "x", ""] {
            assert_eq!(
                r(&["remote", "--api-socket", "/s", "resize", "--cpus", bad]),
                Err(CliError::RemoteBadCpus(bad.into()))
            );
        }
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "pause", "resume"]),
            Err(CliError::RemoteUnexpected("resume".into()))
        );
        assert_eq!(
            r(&["remote", "--api-socket", "/s", "reboot"]),
            Err(CliError::RemoteUnexpected("reboot".into()))
        );
        assert_eq!(
            r(&["remote", "--api-socket"]),
            Err(CliError::MissingValue("--api-socket"))
        );
        // `remote` only counts as the first word.
        assert!(matches!(
            r(&["--kernel", "k", "remote"]),
            Err(CliError::UnknownArgument(_))
        ));
    }
}
