//! The command line: argv to [`Command`], running it, printing, and exit codes.
//!
//! Exit codes are a contract: 0 success, 1 runtime failure (`metrics: ...` on stderr), 2 usage
//! error (a message and a one-line usage hint on stderr, decided before any connection).
//! Data goes to stdout, diagnostics to stderr, `--help` to stdout; a closed stdout is not an
//! error, and a closed stderr does not change the exit code.
//!
//! Each command's options, usage hint and help page come from one table ([`Spec`]), which also
//! drives the argument lexer: an option the table lacks is unknown to the parser too.

use crate::bench::{self, BenchConfig, Workload};
use crate::bulk;
use crate::client::{self, Client};
use crate::defaults::{self, ADDR_ENV};
use crate::journal::{self, Fsync};
use crate::log::chain;
use crate::plot;
use crate::protocol::{self, RequestError};
use crate::server::{Config, Server};
use std::error::Error;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

/// Which help text to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Main,
    Server,
    Put,
    Get,
    Plot,
    Stats,
    Bench,
}

/// One option of a command: what the parser matches and what help and usage show.
struct Opt {
    short: Option<&'static str>,
    long: &'static str,
    /// The value's placeholder (`N`, `SECS`); `None` for a flag.
    value: Option<&'static str>,
    /// Its help; a `\n` starts an indented continuation line.
    help: &'static str,
}

/// One command: the one table behind its parser, its help page and its usage hint, so the
/// three cannot drift apart.
struct Spec {
    topic: Topic,
    name: &'static str,
    /// Operand forms with a line each for the overview, e.g. `("METRIC", "print ...")`.
    forms: &'static [(&'static str, &'static str)],
    /// The operands come before the options in the synopsis (`server [PORT] [OPTIONS]`).
    operands_first: bool,
    /// The help page's text between the synopsis and the options.
    about: &'static str,
    options: &'static [Opt],
}

const HELP: Opt = Opt {
    short: Some("-h"),
    long: "--help",
    value: None,
    help: "show this help",
};
const ADDR: Opt = Opt {
    short: None,
    long: "--addr",
    value: Some("HOST:PORT"),
    help: "server address (default $METRICS_ADDR, else 127.0.0.1:8888)",
};
const TIMEOUT: Opt = Opt {
    short: None,
    long: "--timeout",
    value: Some("SECS"),
    help: "connect, read and write timeout (default 15; 0 = none)",
};

const MAIN: Spec = Spec {
    topic: Topic::Main,
    name: "",
    forms: &[("help [COMMAND]", "show help for a command")],
    operands_first: false,
    about: "",
    options: &[
        HELP,
        Opt {
            short: Some("-V"),
            long: "--version",
            value: None,
            help: "show the version",
        },
    ],
};

const SERVER: Spec = Spec {
    topic: Topic::Server,
    name: "server",
    forms: &[("[PORT]", "serve metrics over TCP (default port 8888)")],
    operands_first: true,
    about: "\
Serves the metrics protocol on PORT (default 8888; 0 picks a free port). Prints
'listening on ADDR:PORT' on stdout once bound; logs go to stderr.",
    options: &[
        HELP,
        Opt {
            short: None,
            long: "--host",
            value: Some("ADDR"),
            help: "address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)",
        },
        Opt {
            short: None,
            long: "--data",
            value: Some("FILE"),
            help: "append every put to FILE and replay it at start-up\n(default: memory only)",
        },
        Opt {
            short: None,
            long: "--fsync",
            value: Some("MODE"),
            help: "with --data: always, everysec or no (default everysec)",
        },
        Opt {
            short: None,
            long: "--retention",
            value: Some("DURATION"),
            help: "forget points older than DURATION: seconds, or a number\n\
                   with s, m, h or d (default: keep everything)",
        },
        Opt {
            short: None,
            long: "--max-line-bytes",
            value: Some("N"),
            help: "longest request line (default 65536, at most 67108864)",
        },
        Opt {
            short: None,
            long: "--max-memory",
            value: Some("SIZE"),
            help: "most bytes the store may hold: bytes, or a number with K, M\n\
                   or G (default: half the machine's memory; 0 = no limit)",
        },
        Opt {
            short: None,
            long: "--max-connections",
            value: Some("N"),
            help: "most clients served at once (default 1024)",
        },
        Opt {
            short: None,
            long: "--idle-timeout",
            value: Some("SECS"),
            help: "close connections silent this long (default 0 = never)",
        },
        Opt {
            short: None,
            long: "--write-timeout",
            value: Some("SECS"),
            help: "close connections that leave a reply unread this long (default 30)",
        },
        Opt {
            short: None,
            long: "--self-metrics",
            value: Some("SECS"),
            help: "store the 'stats' figures as metrics.* points every SECS\n\
                   (default 0 = never)",
        },
        Opt {
            short: None,
            long: "--forward",
            value: Some("HOST:PORT"),
            help: "send every put on to a Graphite plaintext upstream; may be\n\
                   given more than once",
        },
        Opt {
            short: None,
            long: "--forward-buffer",
            value: Some("POINTS"),
            help: "without --data: unsent points kept per upstream before the\n\
                   oldest are dropped (default 1000000)",
        },
    ],
};

const PUT: Spec = Spec {
    topic: Topic::Put,
    name: "put",
    forms: &[
        (
            "METRIC VALUE [TIMESTAMP]",
            "store one point (timestamp defaults to now)",
        ),
        ("-", "store the 'metric value [timestamp]' lines of stdin"),
    ],
    operands_first: false,
    about: "\
Stores VALUE for METRIC at TIMESTAMP (whole seconds since the epoch; default now).
Prints nothing on success.

With '-', reads lines 'metric value [timestamp]' from stdin (what 'metrics get'
prints; Graphite's plaintext format) and sends them pipelined over one connection,
with at most 65536 lines awaiting the server's answer. Each rejected line is
reported on stderr with its line number, and the exit code is then 1; every other
line is stored. A line longer than --max-line-bytes, or whose request would be, is
rejected here, so that the server does not close the connection over it.",
    options: &[
        HELP,
        ADDR,
        TIMEOUT,
        Opt {
            short: None,
            long: "--max-line-bytes",
            value: Some("N"),
            help: "with '-': longest input and request line, as the server's\n\
                   --max-line-bytes (default 65536)",
        },
    ],
};

const FROM: Opt = Opt {
    short: None,
    long: "--from",
    value: Some("TS"),
    help: "only points at or after TS (whole seconds since the epoch)",
};
const TO: Opt = Opt {
    short: None,
    long: "--to",
    value: Some("TS"),
    help: "only points at or before TS",
};
const SINCE: Opt = Opt {
    short: None,
    long: "--since",
    value: Some("DURATION"),
    help: "only points of the last DURATION: seconds, or a number with\n\
           s, m, h or d (instead of --from)",
};

const GET: Spec = Spec {
    topic: Topic::Get,
    name: "get",
    forms: &[("METRIC", "print a metric's points; '*' prints every metric")],
    operands_first: false,
    about: "\
Prints METRIC's points as 'metric value timestamp' lines, oldest first; '*' prints
every metric, sorted by name. This is also Graphite's plaintext format.

--from, --to and --since keep the points in a range, both ends included; a side
left open reaches as far as timestamps go. '--since 15m' starts 15 minutes ago.",
    options: &[HELP, ADDR, TIMEOUT, FROM, TO, SINCE],
};

const PLOT: Spec = Spec {
    topic: Topic::Plot,
    name: "plot",
    forms: &[(
        "METRIC",
        "draw a metric's points as a chart in the terminal",
    )],
    operands_first: false,
    about: "\
Draws METRIC's points as a line chart of braille characters, as wide as $COLUMNS
and one line less high than $LINES (default 80x24), leaving a line for the prompt.
The y axis shows the lowest and highest value, the line under it the first and
last timestamp in UTC. Each column covers a stretch of time and draws everything
from its lowest to its highest value, so short spikes stay visible. No points in
the range is a failure (exit 1).",
    options: &[HELP, ADDR, TIMEOUT, FROM, TO, SINCE],
};

const STATS: Spec = Spec {
    topic: Topic::Stats,
    name: "stats",
    forms: &[("", "print the server's figures about itself")],
    operands_first: false,
    about: "\
Prints the server's own figures (connections, points, requests served, memory) as
'metrics.NAME value timestamp' lines, sorted by name; the timestamp is the server's
time now.",
    options: &[HELP, ADDR, TIMEOUT],
};

const BENCH: Spec = Spec {
    topic: Topic::Bench,
    name: "bench",
    forms: &[("", "measure a server's throughput and latency")],
    operands_first: false,
    about: "\
Loads a server the way redis-benchmark does and prints requests per second, latency
p50/p99/max and errors. Put requests write increasing timestamps to each key,
starting at 1700000000; keys are named bench.key0, bench.key1, ...",
    options: &[
        HELP,
        ADDR,
        TIMEOUT,
        Opt {
            short: Some("-c"),
            long: "--connections",
            value: Some("N"),
            help: "connections (default 50)",
        },
        Opt {
            short: Some("-n"),
            long: "--requests",
            value: Some("N"),
            help: "requests in all (default 100000)",
        },
        Opt {
            short: Some("-P"),
            long: "--pipeline",
            value: Some("N"),
            help: "requests per batch on a connection (default 1)",
        },
        Opt {
            short: None,
            long: "--keys",
            value: Some("N"),
            help: "distinct metrics (default 1000)",
        },
        Opt {
            short: None,
            long: "--workload",
            value: Some("KIND"),
            help: "put, get, or mixed (9 puts to 1 get) (default put)",
        },
    ],
};

/// Every command, in the order the overview lists them.
const COMMANDS: [&Spec; 6] = [&SERVER, &PUT, &GET, &PLOT, &STATS, &BENCH];

const MAIN_ABOUT: &str = "\
Client commands read the server address from --addr, else $METRICS_ADDR, else 127.0.0.1:8888.
Exit codes: 0 success, 1 runtime failure, 2 usage error.
";

impl Topic {
    fn spec(self) -> &'static Spec {
        match self {
            Topic::Main => &MAIN,
            Topic::Server => &SERVER,
            Topic::Put => &PUT,
            Topic::Get => &GET,
            Topic::Plot => &PLOT,
            Topic::Stats => &STATS,
            Topic::Bench => &BENCH,
        }
    }

    /// The one-line usage hint shown after a usage error: every option spelled out.
    fn usage(self) -> String {
        if self == Topic::Main {
            let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).chain(["help"]).collect();
            return format!("usage: metrics <{}> [ARGS...]", names.join("|"));
        }
        let spec = self.spec();
        let options: Vec<String> = spec
            .options
            .iter()
            .map(|o| match o.value {
                Some(value) => format!("[{} {value}]", o.short.unwrap_or(o.long)),
                None => format!("[{}]", o.short.unwrap_or(o.long)),
            })
            .collect();
        let forms: Vec<&str> = spec.forms.iter().map(|f| f.0).collect();
        spec.synopsis(&options.join(" "), &forms.join(" | "))
    }

    /// The help page.
    fn help(self) -> String {
        let mut out = String::new();
        if self == Topic::Main {
            out.push_str(
                "metrics: a small, fast metric collection server and its client\n\n\
                 usage: metrics <command> [ARGS...]\n\ncommands:\n",
            );
            for spec in COMMANDS.iter().chain([&&MAIN]) {
                for (form, summary) in spec.forms {
                    let left = [spec.name, form].join(" ");
                    out.push_str(&row(left.trim(), summary, 32));
                }
            }
            out.push_str("\noptions:\n");
            for option in MAIN.options {
                out.push_str(&row(&option.left(), option.help, 32));
            }
            out.push('\n');
            out.push_str(MAIN_ABOUT);
            return out;
        }
        let spec = self.spec();
        for (i, (form, _)) in spec.forms.iter().enumerate() {
            let line = spec.synopsis("[OPTIONS]", form);
            match i {
                0 => out.push_str(&line),
                _ => out.push_str(&line.replacen("usage:", "      ", 1)),
            }
            out.push('\n');
        }
        out.push('\n');
        out.push_str(spec.about);
        out.push_str("\n\noptions:\n");
        for option in spec.options {
            out.push_str(&row(&option.left(), option.help, 25));
        }
        out
    }
}

impl Spec {
    fn synopsis(&self, options: &str, operands: &str) -> String {
        let parts = if self.operands_first {
            [operands, options]
        } else {
            [options, operands]
        };
        let mut line = format!("usage: metrics {}", self.name);
        for part in parts.iter().filter(|p| !p.is_empty()) {
            line.push(' ');
            line.push_str(part);
        }
        line
    }

    /// The option `arg` names, as `--long` or as one of its short forms.
    fn option(&self, arg: &str) -> Option<&'static Opt> {
        self.options
            .iter()
            .find(|o| o.long == arg || o.short == Some(arg))
    }
}

impl Opt {
    /// `-c, --connections N`: the left column of a help row.
    fn left(&self) -> String {
        let mut left = match self.short {
            Some(short) => format!("{short}, {}", self.long),
            None => self.long.to_string(),
        };
        if let Some(value) = self.value {
            left.push(' ');
            left.push_str(value);
        }
        left
    }
}

/// `  left   help`, the help in a column `width` wide after two spaces of indent.
fn row(left: &str, help: &str, width: usize) -> String {
    let indent = " ".repeat(2 + width);
    let mut out = format!("  {left:<width$}");
    if left.len() >= width {
        out.push('\n');
        out.push_str(&indent);
    }
    for (i, line) in help.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(&indent);
        }
        out.push_str(line.trim_start());
    }
    out.push('\n');
    out
}

/// Where and how patiently a client command talks to the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub addr: String,
    pub timeout: Option<Duration>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help(Topic),
    Version,
    Server(Config),
    Put {
        connect: Connect,
        metric: String,
        value: f64,
        timestamp: Option<i64>,
    },
    PutStdin {
        connect: Connect,
        /// The longest input and request line (`--max-line-bytes`).
        max_line_bytes: usize,
    },
    Get {
        connect: Connect,
        metric: String,
        range: Range,
    },
    Plot {
        connect: Connect,
        metric: String,
        range: Range,
    },
    Stats(Connect),
    Bench(BenchConfig),
}

/// The start of a time range, as the command line gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `--from TS`.
    At(i64),
    /// `--since DURATION`: this long before the command runs.
    Since(Duration),
}

/// The time range of `get` and `plot`: no side given means the whole series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    pub from: Option<Start>,
    pub to: Option<i64>,
}

impl Range {
    /// The inclusive bounds to ask for, `now` being the time for `--since`; `None` when no
    /// option was given, so that the plain `get` goes out unchanged. An open side is the i64
    /// extreme.
    pub fn bounds(&self, now: i64) -> Option<(i64, i64)> {
        if *self == Range::default() {
            return None;
        }
        let from = match self.from {
            None => i64::MIN,
            Some(Start::At(ts)) => ts,
            Some(Start::Since(ago)) => {
                i64::try_from(ago.as_secs()).map_or(i64::MIN, |ago| now.saturating_sub(ago))
            }
        };
        Some((from, self.to.unwrap_or(i64::MAX)))
    }
}

/// A command line that cannot be run; exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    pub topic: Topic,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsageError {}

/// One command-line argument as the parser sees it.
enum Arg<'a> {
    /// An option of the command's table, by its long name (`--timeout`), however it was
    /// written (`-c`, `--name=value`).
    Option(&'static str),
    Positional(&'a str),
}

/// A small argument lexer driven by the command's table: only its options are options, so
/// negative numbers (`-2.25`) and `-` stay positional; `--` ends the options.
struct Args<'a> {
    rest: std::slice::Iter<'a, &'a str>,
    inline: Option<&'a str>,
    options_done: bool,
    spec: &'static Spec,
    /// The option just read, as written: error messages use it.
    current: &'a str,
}

impl<'a> Args<'a> {
    fn new(args: &'a [&'a str], topic: Topic) -> Self {
        Args {
            rest: args.iter(),
            inline: None,
            options_done: false,
            spec: topic.spec(),
            current: "",
        }
    }

    fn next(&mut self) -> Result<Option<Arg<'a>>, UsageError> {
        if let Some(value) = self.inline.take() {
            return Err(self.error(format!("unexpected value '{value}'")));
        }
        let Some(&arg) = self.rest.next() else {
            return Ok(None);
        };
        if self.options_done {
            return Ok(Some(Arg::Positional(arg)));
        }
        if arg == "--" {
            self.options_done = true;
            return self.next();
        }
        let name = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                self.inline = Some(value);
                name
            }
            _ => arg,
        };
        match self.spec.option(name) {
            Some(option) => {
                self.current = name;
                Ok(Some(Arg::Option(option.long)))
            }
            None if name.starts_with("--") => {
                self.inline = None;
                Err(self.error(format!("unknown option '{name}'")))
            }
            None => Ok(Some(Arg::Positional(arg))),
        }
    }

    /// The value of the option just read: `--name=value` or the next argument.
    fn value(&mut self) -> Result<&'a str, UsageError> {
        if let Some(value) = self.inline.take() {
            return Ok(value);
        }
        match self.rest.next() {
            Some(&value) => Ok(value),
            None => Err(self.error(format!("{} needs a value", self.current))),
        }
    }

    /// A timestamp: whole seconds, as the protocol reads them.
    fn timestamp(&mut self) -> Result<i64, UsageError> {
        let text = self.value()?;
        protocol::parse_timestamp(text).map_err(|_| {
            self.error(format!(
                "invalid value for {}: '{text}' (a whole number of seconds)",
                self.current
            ))
        })
    }

    fn number<T: std::str::FromStr>(&mut self) -> Result<T, UsageError> {
        let text = self.value()?;
        text.parse()
            .map_err(|_| self.error(format!("invalid value for {}: '{text}'", self.current)))
    }

    /// A count of at least 1.
    fn count<T: std::str::FromStr + PartialEq + From<u8>>(&mut self) -> Result<T, UsageError> {
        let count = self.number()?;
        if count == T::from(0) {
            return Err(self.error(format!("{} must be at least 1", self.current)));
        }
        Ok(count)
    }

    /// Seconds, possibly fractional; 0 means none. A positive time under a nanosecond would
    /// become zero, which the socket calls refuse, so it is refused here.
    fn seconds(&mut self) -> Result<Option<Duration>, UsageError> {
        let text = self.value()?;
        let secs: f64 = text.parse().unwrap_or(f64::NAN);
        let name = self.current;
        if !(0.0..=1e9).contains(&secs) {
            return Err(self.error(format!("invalid value for {name}: '{text}' (seconds)")));
        }
        if secs == 0.0 {
            return Ok(None);
        }
        let duration = Duration::from_secs_f64(secs);
        if duration.is_zero() {
            return Err(self.error(format!(
                "invalid value for {name}: '{text}' is under a nanosecond (0 means none)"
            )));
        }
        Ok(Some(duration))
    }

    /// The server address: `--addr`, else `$METRICS_ADDR`, else the default; checked now, so
    /// that an address that can never work is a usage error rather than a failed connection.
    fn addr(&self, flag: Option<&str>, env_addr: Option<&str>) -> Result<String, UsageError> {
        let (addr, from) = match (flag, env_addr.filter(|a| !a.is_empty())) {
            (Some(addr), _) => (addr, "--addr"),
            (None, Some(addr)) => (addr, ADDR_ENV),
            (None, None) => (defaults::ADDR, "the default"),
        };
        check_addr(addr).map_err(|why| {
            self.error(format!(
                "invalid address '{}' in {from}: {why}",
                client::escape_controls(addr)
            ))
        })?;
        Ok(addr.to_string())
    }

    fn error(&self, message: String) -> UsageError {
        UsageError {
            message,
            topic: self.spec.topic,
        }
    }
}

/// Whether `addr` can be a server address: `HOST:PORT` with a port from 1 to 65535, and an
/// IPv6 host in brackets (`[::1]:8888`). Whether the host exists is for the connect to say.
///
/// # Errors
/// What is wrong, in words for the user.
pub fn check_addr(addr: &str) -> Result<(), &'static str> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("expected HOST:PORT");
    };
    if host.is_empty() {
        return Err("no host before the port");
    }
    let bracketed = host.len() > 2 && host.starts_with('[') && host.ends_with(']');
    if (host.contains(':') || host.starts_with('[') || host.ends_with(']')) && !bracketed {
        return Err("an IPv6 address goes in brackets, as in [::1]:8888");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port must be a number from 1 to 65535"),
        Ok(_) => Ok(()),
    }
}

/// Reads `90`, `90s`, `15m`, `24h` or `30d`: a whole, positive number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.char_indices().last()? {
        (at, 's') => (&text[..at], 1),
        (at, 'm') => (&text[..at], 60),
        (at, 'h') => (&text[..at], 3600),
        (at, 'd') => (&text[..at], 86_400),
        _ => (text, 1),
    };
    let count: u64 = number.parse().ok().filter(|&n| n > 0)?;
    count.checked_mul(unit).map(Duration::from_secs)
}

/// Reads `1048576`, `300K`, `512M` or `4G` (powers of 1024): a number of bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let (number, unit) = match text.char_indices().last()? {
        (at, 'K' | 'k') => (&text[..at], 1 << 10),
        (at, 'M' | 'm') => (&text[..at], 1 << 20),
        (at, 'G' | 'g') => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let count: usize = number.parse().ok()?;
    count.checked_mul(unit)
}

fn topic_named(name: &str) -> Option<Topic> {
    COMMANDS
        .iter()
        .find(|spec| spec.name == name)
        .map(|spec| spec.topic)
}

/// Reads a command line (without the program name). `env_addr` is `$METRICS_ADDR`.
///
/// # Errors
/// A [`UsageError`] for anything that cannot run: unknown command or option, wrong number of
/// arguments, a value or timestamp that is not a number, a value that is not finite, an address
/// without a valid port, a timeout under a nanosecond.
pub fn parse(args: &[&str], env_addr: Option<&str>) -> Result<Command, UsageError> {
    // `metrics --addr X get m` reads as `metrics get --addr X m`.
    let mut leading = 0;
    while let Some(arg) = args.get(leading) {
        match *arg {
            "--addr" | "--timeout" => leading += 2,
            a if a.starts_with("--addr=") || a.starts_with("--timeout=") => leading += 1,
            _ => break,
        }
    }
    if leading > 0 && leading < args.len() {
        let mut moved = vec![args[leading]];
        moved.extend_from_slice(&args[..leading]);
        moved.extend_from_slice(&args[leading + 1..]);
        return parse(&moved, env_addr);
    }
    let main = Args::new(args, Topic::Main);
    let Some((&command, rest)) = args.split_first() else {
        return Err(main.error("no command given".into()));
    };
    if let Some(topic) = topic_named(command) {
        return match topic {
            Topic::Server => parse_server(rest),
            Topic::Bench => parse_bench(rest, env_addr),
            _ => parse_client(topic, rest, env_addr),
        };
    }
    match MAIN.option(command).map(|option| option.long) {
        Some("--help") => Ok(Command::Help(Topic::Main)),
        Some("--version") => Ok(Command::Version),
        Some(other) => Err(unhandled(&main, other)),
        None if command == "help" => match rest {
            [] => Ok(Command::Help(Topic::Main)),
            [name] => topic_named(name)
                .map(Command::Help)
                .ok_or_else(|| main.error(format!("no help for unknown command '{name}'"))),
            _ => Err(main.error("help takes at most one command".into())),
        },
        None => Err(main.error(format!("unknown command '{command}'"))),
    }
}

fn parse_server(args: &[&str]) -> Result<Command, UsageError> {
    let mut args = Args::new(args, Topic::Server);
    let mut config = Config::default();
    let mut port = None;
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Option("--help") => return Ok(Command::Help(Topic::Server)),
            Arg::Option("--host") => config.host = args.value()?.to_string(),
            Arg::Option("--max-line-bytes") => {
                config.max_line_bytes = args.count()?;
                // The data file is read back with lines of at most this.
                if config.max_line_bytes > journal::LINE_MOST {
                    return Err(args.error(format!(
                        "--max-line-bytes must be at most {}",
                        journal::LINE_MOST
                    )));
                }
            }
            Arg::Option("--max-connections") => config.max_connections = args.count()?,
            Arg::Option("--max-memory") => {
                let text = args.value()?;
                let size = parse_size(text).ok_or_else(|| {
                    args.error(format!(
                        "invalid --max-memory '{text}' (bytes, or a number with K, M or G)"
                    ))
                })?;
                config.max_memory = (size > 0).then_some(size);
            }
            Arg::Option("--idle-timeout") => config.idle_timeout = args.seconds()?,
            Arg::Option("--data") => config.data = Some(args.value()?.into()),
            Arg::Option("--fsync") => {
                let text = args.value()?;
                config.fsync = Fsync::parse(text).ok_or_else(|| {
                    args.error(format!(
                        "unknown --fsync mode '{text}' (always, everysec or no)"
                    ))
                })?;
            }
            Arg::Option("--retention") => {
                let text = args.value()?;
                config.retention = Some(parse_duration(text).ok_or_else(|| {
                    args.error(format!(
                        "invalid --retention '{text}' (seconds, or a number with s, m, h or d)"
                    ))
                })?);
            }
            Arg::Option("--write-timeout") => {
                config.write_timeout = args
                    .seconds()?
                    .ok_or_else(|| args.error("--write-timeout must be more than 0".into()))?;
            }
            Arg::Option("--self-metrics") => config.self_metrics = args.seconds()?,
            Arg::Option("--forward") => {
                let addr = args.value()?;
                check_addr(addr).map_err(|problem| {
                    args.error(format!("invalid --forward '{addr}': {problem}"))
                })?;
                if config.forward.iter().any(|a| a == addr) {
                    return Err(args.error(format!("--forward '{addr}' is given twice")));
                }
                config.forward.push(addr.to_string());
            }
            Arg::Option("--forward-buffer") => config.forward_buffer = args.count()?,
            Arg::Option(other) => return Err(unhandled(&args, other)),
            Arg::Positional(text) if port.is_none() => {
                port = Some(
                    text.parse()
                        .map_err(|_| args.error(format!("invalid port '{text}'")))?,
                );
            }
            Arg::Positional(text) => {
                return Err(args.error(format!("unexpected argument '{text}'")))
            }
        }
    }
    config.port = port.unwrap_or(config.port);
    Ok(Command::Server(config))
}

/// An option in the table that the parser has no arm for: a bug the unit tests catch.
fn unhandled(args: &Args<'_>, option: &str) -> UsageError {
    args.error(format!("option '{option}' is not handled"))
}

fn parse_client(
    topic: Topic,
    args: &[&str],
    env_addr: Option<&str>,
) -> Result<Command, UsageError> {
    let command = topic.spec().name;
    let mut args = Args::new(args, topic);
    let mut addr = None;
    let mut timeout = Some(defaults::TIMEOUT);
    let mut max_line_bytes = None;
    let mut range = Range::default();
    let (mut from, mut since) = (None, None);
    let mut positional = Vec::new();
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Option("--help") => return Ok(Command::Help(topic)),
            Arg::Option("--addr") => addr = Some(args.value()?),
            Arg::Option("--timeout") => timeout = args.seconds()?,
            Arg::Option("--max-line-bytes") => max_line_bytes = Some(args.count()?),
            Arg::Option("--from") => from = Some(args.timestamp()?),
            Arg::Option("--to") => range.to = Some(args.timestamp()?),
            Arg::Option("--since") => {
                let text = args.value()?;
                since = Some(parse_duration(text).ok_or_else(|| {
                    args.error(format!(
                        "invalid --since '{text}' (seconds, or a number with s, m, h or d)"
                    ))
                })?);
            }
            Arg::Option(other) => return Err(unhandled(&args, other)),
            Arg::Positional(text) => positional.push(text),
        }
    }
    range.from = match (from, since) {
        (Some(_), Some(_)) => {
            return Err(args.error("--since and --from cannot be given together".into()))
        }
        (Some(ts), None) => Some(Start::At(ts)),
        (None, Some(ago)) => Some(Start::Since(ago)),
        (None, None) => None,
    };
    let connect = Connect {
        addr: args.addr(addr, env_addr)?,
        timeout,
    };
    let check_metric = |metric: &str, for_put| match protocol::check_metric(metric, for_put) {
        Err(problem) => Err(args.error(problem.to_string())),
        Ok(()) => Ok(metric.to_string()),
    };
    match (topic, positional.as_slice()) {
        (Topic::Put, ["-"]) => Ok(Command::PutStdin {
            connect,
            max_line_bytes: max_line_bytes.unwrap_or(bulk::MAX_LINE_BYTES),
        }),
        (Topic::Put, [metric, value, rest @ ..]) if rest.len() <= 1 => {
            if max_line_bytes.is_some() {
                return Err(args.error("--max-line-bytes is for 'put -' only".into()));
            }
            let metric = check_metric(metric, true)?;
            let value = protocol::parse_value(value).map_err(|e| match e {
                RequestError::NonFiniteValue => {
                    args.error(format!("value must be finite: '{value}'"))
                }
                _ => args.error(format!("value is not a number: '{value}'")),
            })?;
            let timestamp = match rest.first() {
                Some(text) => Some(protocol::parse_timestamp(text).map_err(|_| {
                    args.error(format!(
                        "timestamp is not a whole number of seconds: '{text}'"
                    ))
                })?),
                None => None,
            };
            Ok(Command::Put {
                connect,
                metric,
                value,
                timestamp,
            })
        }
        (Topic::Get, [metric]) => Ok(Command::Get {
            connect,
            metric: check_metric(metric, false)?,
            range,
        }),
        (Topic::Plot, ["*"]) => Err(args.error("plot draws one metric, not '*'".into())),
        (Topic::Plot, [metric]) => Ok(Command::Plot {
            connect,
            metric: check_metric(metric, false)?,
            range,
        }),
        (Topic::Stats, []) => Ok(Command::Stats(connect)),
        _ => Err(args.error(format!("wrong number of arguments for '{command}'"))),
    }
}

fn parse_bench(args: &[&str], env_addr: Option<&str>) -> Result<Command, UsageError> {
    let mut args = Args::new(args, Topic::Bench);
    let mut config = BenchConfig::default();
    let mut addr = None;
    while let Some(arg) = args.next()? {
        match arg {
            Arg::Option("--help") => return Ok(Command::Help(Topic::Bench)),
            Arg::Option("--addr") => addr = Some(args.value()?),
            Arg::Option("--timeout") => config.timeout = args.seconds()?,
            Arg::Option("--connections") => config.connections = args.count()?,
            Arg::Option("--requests") => config.requests = args.number()?,
            Arg::Option("--pipeline") => config.pipeline = args.count()?,
            Arg::Option("--keys") => config.keys = args.count()?,
            Arg::Option("--workload") => {
                let text = args.value()?;
                config.workload = Workload::parse(text).ok_or_else(|| {
                    args.error(format!("unknown workload '{text}' (put, get or mixed)"))
                })?;
            }
            Arg::Option(other) => return Err(unhandled(&args, other)),
            Arg::Positional(text) => {
                return Err(args.error(format!("unexpected argument '{text}'")))
            }
        }
    }
    config.addr = args.addr(addr, env_addr)?;
    Ok(Command::Bench(config))
}

/// Runs the program: the whole of `main`.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Result<Vec<String>, OsString> = args
        .into_iter()
        .skip(1)
        .map(OsString::into_string)
        .collect();
    let args = match args {
        Ok(args) => args,
        Err(bad) => {
            return usage_failure(&UsageError {
                message: format!("argument is not valid UTF-8: {bad:?}"),
                topic: Topic::Main,
            })
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env_addr = std::env::var(ADDR_ENV).ok();
    match parse(&args, env_addr.as_deref()) {
        Ok(command) => execute(command),
        Err(e) => usage_failure(&e),
    }
}

/// Writes a diagnostic to stderr. A stderr that is closed or that nobody reads any more changes
/// nothing: the exit code still says what happened (`eprintln!` would panic, exit 101).
fn say(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

fn usage_failure(e: &UsageError) -> ExitCode {
    say(&format!("metrics: {e}\n{}\n", e.topic.usage()));
    ExitCode::from(2)
}

fn failure(error: &dyn Error) -> ExitCode {
    fail(&chain(error))
}

fn fail(message: &str) -> ExitCode {
    say(&format!("metrics: {message}\n"));
    ExitCode::FAILURE
}

fn execute(command: Command) -> ExitCode {
    match command {
        Command::Help(topic) => print_quietly(&topic.help()),
        Command::Version => print_quietly(&format!("metrics {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Server(config) => serve(config),
        Command::Put {
            connect,
            metric,
            value,
            timestamp,
        } => match Client::connect(connect.addr.as_str(), connect.timeout)
            .and_then(|mut client| client.put(&metric, value, timestamp))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failure(&e),
        },
        Command::PutStdin {
            connect,
            max_line_bytes,
        } => put_stdin(connect, max_line_bytes),
        Command::Get {
            connect,
            metric,
            range,
        } => get(&connect, &metric, range.bounds(defaults::now())),
        Command::Plot {
            connect,
            metric,
            range,
        } => plot(&connect, &metric, range.bounds(defaults::now())),
        Command::Stats(connect) => stats(&connect),
        Command::Bench(config) => match bench::run(&config) {
            Ok(report) if report.errors == 0 => print_quietly(&report.to_string()),
            Ok(report) => {
                print_quietly(&report.to_string());
                fail(&format!("{} requests failed", report.errors))
            }
            Err(e) => failure(&e),
        },
    }
}

/// Prints to stdout; a reader that went away is not an error.
fn print_quietly(text: &str) -> ExitCode {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            fail(&format!("cannot write output: {e}"))
        }
        _ => ExitCode::SUCCESS,
    }
}

fn serve(config: Config) -> ExitCode {
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => return failure(&e),
    };
    let addr = match server.local_addr() {
        Ok(addr) => addr,
        Err(e) => return fail(&format!("cannot read the listening address: {e}")),
    };
    let mut stdout = io::stdout().lock();
    // Scripts and tests wait for this line; a closed stdout must not stop the server.
    let _ = writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush());
    drop(stdout);
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(&e),
    }
}

fn put_stdin(connect: Connect, max_line_bytes: usize) -> ExitCode {
    let options = bulk::Options {
        addr: connect.addr,
        timeout: connect.timeout,
        max_line_bytes,
    };
    match bulk::put_lines(io::stdin().lock(), &options, &bulk::report_to_stderr) {
        // Each rejected line has been reported already.
        Ok(summary) if summary.rejected == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => failure(&e),
    }
}

/// `get METRIC` without a range, `get METRIC FROM TO` with one, each point to `each`.
fn fetch(
    connect: &Connect,
    metric: &str,
    bounds: Option<(i64, i64)>,
    each: impl FnMut(&str, f64, i64) -> ControlFlow<()>,
) -> Result<(), client::ClientError> {
    let mut client = Client::connect(connect.addr.as_str(), connect.timeout)?;
    match bounds {
        None => client.get_each(metric, each),
        Some((from, to)) => client.get_range_each(metric, from, to, each),
    }
}

fn get(connect: &Connect, metric: &str, bounds: Option<(i64, i64)>) -> ExitCode {
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut line = Vec::with_capacity(128);
    let mut write_error = None;
    let result = fetch(connect, metric, bounds, |name, value, timestamp| {
        line.clear();
        protocol::write_point(&mut line, name, value, timestamp);
        match out.write_all(&line) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    let flushed = match write_error {
        Some(e) => Err(e),
        None => out.flush(),
    };
    match (result, flushed) {
        (_, Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        (_, Err(e)) => fail(&format!("cannot write output: {e}")),
        (Err(e), Ok(())) => failure(&e),
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
    }
}

/// The default chart size, when `COLUMNS` or `LINES` is unset or not a sensible number.
const TERMINAL: (usize, usize) = (80, 24);
/// The largest `COLUMNS` or `LINES` believed; a larger one reads as unset.
const MAX_TERMINAL: usize = 10_000;

/// The terminal's size from `COLUMNS` and `LINES`, each a whole number from 1 to
/// [`MAX_TERMINAL`], else the default 80x24.
fn terminal_size(columns: Option<&str>, lines: Option<&str>) -> (usize, usize) {
    let read = |text: Option<&str>, default| {
        text.and_then(|t| t.trim().parse().ok())
            .filter(|n| (1..=MAX_TERMINAL).contains(n))
            .unwrap_or(default)
    };
    (read(columns, TERMINAL.0), read(lines, TERMINAL.1))
}

fn plot(connect: &Connect, metric: &str, bounds: Option<(i64, i64)>) -> ExitCode {
    let mut reducer = plot::Reducer::new();
    let result = fetch(connect, metric, bounds, |_, value, timestamp| {
        reducer.push(timestamp, value);
        ControlFlow::Continue(())
    });
    if let Err(e) = result {
        return failure(&e);
    }
    if reducer.seen() == 0 {
        let metric = client::escape_controls(metric);
        return fail(&match bounds {
            Some(_) => format!("no points for {metric} in that range"),
            None => format!("no points for {metric}"),
        });
    }
    let env = |name| std::env::var(name).ok();
    let (columns, lines) = terminal_size(env("COLUMNS").as_deref(), env("LINES").as_deref());
    // One line less than the terminal, so that the prompt after it does not push the top off.
    let chart = plot::render(&reducer.points(), columns, lines.saturating_sub(1).max(1));
    print_quietly(&chart)
}

fn stats(connect: &Connect) -> ExitCode {
    let stats = match Client::connect(connect.addr.as_str(), connect.timeout)
        .and_then(|mut client| client.stats())
    {
        Ok(stats) => stats,
        Err(e) => return failure(&e),
    };
    let mut out = Vec::new();
    for (name, value) in &stats.values {
        protocol::write_point(&mut out, name, *value, stats.time);
    }
    print_quietly(&String::from_utf8_lossy(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Command {
        parse(args, None).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn parse_err(args: &[&str]) -> UsageError {
        parse(args, None).expect_err("expected a usage error")
    }

    #[test]
    fn put_reads_metric_value_and_optional_timestamp() {
        assert_eq!(
            parse_ok(&["put", "palm.cpu", "0.5", "1150864247"]),
            Command::Put {
                connect: Connect {
                    addr: defaults::ADDR.into(),
                    timeout: Some(Duration::from_secs(15))
                },
                metric: "palm.cpu".into(),
                value: 0.5,
                timestamp: Some(1150864247),
            }
        );
        match parse_ok(&["put", "m", "-2.25"]) {
            Command::Put {
                value, timestamp, ..
            } => assert_eq!((value, timestamp), (-2.25, None)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn addr_comes_from_flag_then_env_then_default() {
        let addr = |args: &[&str], env: Option<&str>| match parse(args, env).unwrap() {
            Command::Get { connect, .. } => connect.addr,
            other => panic!("{other:?}"),
        };
        assert_eq!(addr(&["get", "*"], None), defaults::ADDR);
        assert_eq!(addr(&["get", "*"], Some("h:1")), "h:1");
        assert_eq!(addr(&["get", "--addr", "x:2", "*"], Some("h:1")), "x:2");
        assert_eq!(addr(&["get", "*", "--addr=y:3"], None), "y:3");
    }

    #[test]
    fn timeout_zero_means_none() {
        match parse_ok(&["get", "--timeout", "0", "m"]) {
            Command::Get { connect, .. } => assert_eq!(connect.timeout, None),
            other => panic!("{other:?}"),
        }
        match parse_ok(&["get", "--timeout", "0.5", "m"]) {
            Command::Get { connect, .. } => {
                assert_eq!(connect.timeout, Some(Duration::from_millis(500)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for args in [
            &[][..],
            &["frobnicate"],
            &["put", "m"],
            &["put", "m", "1", "2", "3"],
            &["put", "m", "x"],
            &["put", "m", "nan"],
            &["put", "m", "-inf", "1"],
            &["put", "m", "1", "1.5"],
            &["put", "*", "1"],
            &["get"],
            &["get", "a", "b"],
            &["get", "--bogus", "m"],
            &["get", "--timeout", "x", "m"],
            &["get", "--addr"],
            &["server", "99999"],
            &["server", "--max-connections", "0"],
            &["server", "1", "2"],
            &["help", "nope"],
        ] {
            assert!(parse(args, None).is_err(), "{args:?}");
        }
        assert_eq!(parse_err(&["put", "m", "x"]).topic, Topic::Put);
        assert_eq!(
            parse_err(&["put", "m", "inf"]).message,
            "value must be finite: 'inf'"
        );
    }

    fn range_of(args: &[&str]) -> Range {
        match parse_ok(args) {
            Command::Get { range, .. } | Command::Plot { range, .. } => range,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_and_plot_take_a_time_range() {
        assert_eq!(range_of(&["get", "m"]), Range::default());
        assert_eq!(Range::default().bounds(1000), None);
        let range = range_of(&["get", "--from", "-5", "--to=+20", "*"]);
        assert_eq!(
            range,
            Range {
                from: Some(Start::At(-5)),
                to: Some(20)
            }
        );
        assert_eq!(range.bounds(1000), Some((-5, 20)));
        let range = range_of(&["plot", "m", "--since", "15m"]);
        assert_eq!(range.from, Some(Start::Since(Duration::from_secs(900))));
        assert_eq!(range.bounds(10_000), Some((9_100, i64::MAX)));
        assert_eq!(
            range_of(&["get", "--to", "7", "m"]).bounds(0),
            Some((i64::MIN, 7))
        );
        assert_eq!(
            range_of(&["get", "--since", "3d", "--to", "7", "m"]).bounds(100),
            Some((100 - 3 * 86_400, 7))
        );
        // A --since longer than time goes back reaches the earliest timestamp.
        assert_eq!(
            range_of(&["get", "--since", "199999999999999d", "m"]).bounds(0),
            Some((i64::MIN, i64::MAX))
        );
        assert_eq!(
            range_of(&["get", "--from", "9223372036854775807", "m"]).bounds(0),
            Some((i64::MAX, i64::MAX))
        );
    }

    #[test]
    fn bad_ranges_are_usage_errors() {
        for (args, message) in [
            (
                &["get", "--from", "1", "--since", "1h", "m"][..],
                "--since and --from cannot be given together",
            ),
            (
                &["plot", "--since", "1h", "--from", "1", "m"],
                "--since and --from cannot be given together",
            ),
            (
                &["get", "--from", "1.5", "m"],
                "invalid value for --from: '1.5' (a whole number of seconds)",
            ),
            (
                &["get", "--to", "9223372036854775808", "m"],
                "invalid value for --to: '9223372036854775808' (a whole number of seconds)",
            ),
            (
                &["get", "--since", "1y", "m"],
                "invalid --since '1y' (seconds, or a number with s, m, h or d)",
            ),
            (
                &["plot", "--since", "0", "m"],
                "invalid --since '0' (seconds, or a number with s, m, h or d)",
            ),
            (&["get", "--since"], "--since needs a value"),
            (&["plot", "*"], "plot draws one metric, not '*'"),
            (&["plot"], "wrong number of arguments for 'plot'"),
            (&["plot", "a", "b"], "wrong number of arguments for 'plot'"),
            (&["stats", "x"], "wrong number of arguments for 'stats'"),
            (&["stats", "--from", "1"], "unknown option '--from'"),
        ] {
            let e = parse_err(args);
            assert_eq!(e.message, message, "{args:?}");
            assert_eq!(e.topic.spec().name, args[0], "{args:?}");
        }
    }

    #[test]
    fn stats_takes_only_the_connection() {
        assert_eq!(
            parse_ok(&["stats", "--addr", "h:1", "--timeout", "2"]),
            Command::Stats(Connect {
                addr: "h:1".into(),
                timeout: Some(Duration::from_secs(2))
            })
        );
    }

    #[test]
    fn the_terminal_size_comes_from_columns_and_lines_when_sane() {
        assert_eq!(terminal_size(None, None), (80, 24));
        assert_eq!(terminal_size(Some("120"), Some("40")), (120, 40));
        assert_eq!(terminal_size(Some(" 100 "), None), (100, 24));
        for bad in [
            "",
            "0",
            "-3",
            "wide",
            "1e3",
            "10001",
            "99999999999999999999",
        ] {
            assert_eq!(terminal_size(Some(bad), Some(bad)), (80, 24), "{bad}");
        }
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_ok(&["--help"]), Command::Help(Topic::Main));
        assert_eq!(parse_ok(&["help"]), Command::Help(Topic::Main));
        assert_eq!(parse_ok(&["help", "put"]), Command::Help(Topic::Put));
        assert_eq!(parse_ok(&["get", "--help"]), Command::Help(Topic::Get));
        assert_eq!(parse_ok(&["server", "-h"]), Command::Help(Topic::Server));
        assert_eq!(parse_ok(&["--version"]), Command::Version);
    }

    #[test]
    fn sizes_take_a_unit() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("300K"), Some(300 << 10));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4g"), Some(4 << 30));
        assert_eq!(parse_size("0"), Some(0));
        for bad in ["", "M", "-1", "1.5G", "5T", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        match parse_ok(&["server", "--max-memory", "0"]) {
            Command::Server(config) => assert_eq!(config.max_memory, None),
            other => panic!("{other:?}"),
        }
        match parse_ok(&["server", "--max-memory=2M"]) {
            Command::Server(config) => assert_eq!(config.max_memory, Some(2 << 20)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30d"), Some(Duration::from_secs(2_592_000)));
        for bad in ["", "0", "-5", "1.5h", "h", "5w", "999999199999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn server_data_options() {
        match parse_ok(&[
            "server",
            "--data",
            "d.txt",
            "--fsync",
            "always",
            "--retention",
            "7d",
        ]) {
            Command::Server(config) => {
                assert_eq!(config.data, Some("d.txt".into()));
                assert_eq!(config.fsync, Fsync::Always);
                assert_eq!(config.retention, Some(Duration::from_secs(7 * 86_400)));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["server", "--fsync", "sometimes"], None).is_err());
        assert!(parse(&["server", "--retention", "1y"], None).is_err());
    }

    #[test]
    fn server_options() {
        match parse_ok(&[
            "server",
            "0",
            "--host",
            "::1",
            "--max-line-bytes=100",
            "--max-connections",
            "3",
            "--idle-timeout",
            "2",
        ]) {
            Command::Server(config) => {
                assert_eq!(config.port, 0);
                assert_eq!(config.host, "::1");
                assert_eq!(config.max_line_bytes, 100);
                assert_eq!(config.max_connections, 3);
                assert_eq!(config.idle_timeout, Some(Duration::from_secs(2)));
            }
            other => panic!("{other:?}"),
        }
        match parse_ok(&["server"]) {
            Command::Server(config) => {
                assert_eq!((config.port, config.host.as_str()), (8888, "127.0.0.1"))
            }
            other => panic!("{other:?}"),
        }
        // Every line the server writes to its data file must be one it can read back.
        let most = journal::LINE_MOST.to_string();
        match parse_ok(&["server", "--max-line-bytes", &most]) {
            Command::Server(config) => assert_eq!(config.max_line_bytes, journal::LINE_MOST),
            other => panic!("{other:?}"),
        }
        let over = (journal::LINE_MOST + 1).to_string();
        assert_eq!(
            parse_err(&["server", "--max-line-bytes", &over]).message,
            "--max-line-bytes must be at most 67108864"
        );
    }

    /// Arguments that make the parser take `option` of `topic`, with a value if it has one.
    fn with_option(topic: Topic, option: &Opt) -> Vec<&'static str> {
        let mut args = match topic {
            Topic::Main => vec![],
            _ => vec![topic.spec().name],
        };
        args.push(option.long);
        if let Some(value) = option.value {
            args.push(match value {
                "HOST:PORT" => "127.0.0.1:9",
                "MODE" => "always",
                "SIZE" => "300K",
                "DURATION" => "7d",
                "KIND" => "mixed",
                "FILE" | "ADDR" => "x",
                _ => "3",
            });
        }
        if topic == Topic::Put {
            args.push("-");
        }
        args
    }

    #[test]
    fn every_option_in_the_table_is_parsed_and_shown_in_help_and_usage() {
        for topic in [
            Topic::Main,
            Topic::Server,
            Topic::Put,
            Topic::Get,
            Topic::Plot,
            Topic::Stats,
            Topic::Bench,
        ] {
            let (help, usage) = (topic.help(), topic.usage());
            for option in topic.spec().options {
                let args = with_option(topic, option);
                let args = if matches!(topic, Topic::Get | Topic::Plot) {
                    [&args[..], &["m"]].concat()
                } else {
                    args
                };
                match parse(&args, None) {
                    Ok(_) => {}
                    Err(e) => panic!("{args:?}: {e}"),
                }
                if let Some(short) = option.short {
                    let mut args = args.clone();
                    let at = args.iter().position(|a| *a == option.long).unwrap();
                    args[at] = short;
                    assert!(parse(&args, None).is_ok(), "{args:?}");
                }
                assert!(
                    help.contains(&option.left()),
                    "{topic:?} help lacks {}",
                    option.long
                );
                if topic != Topic::Main {
                    let shown = option.short.unwrap_or(option.long);
                    assert!(
                        usage.contains(&format!("[{shown}")),
                        "{topic:?} usage lacks {shown}"
                    );
                }
            }
            // Options of other commands are not options here.
            if topic != Topic::Main {
                let name = topic.spec().name;
                assert_eq!(
                    parse(&[name, "--nonsense"], None).unwrap_err().message,
                    "unknown option '--nonsense'"
                );
            }
        }
    }

    #[test]
    fn usage_and_help_list_every_command() {
        let (usage, help) = (Topic::Main.usage(), Topic::Main.help());
        assert_eq!(
            usage,
            "usage: metrics <server|put|get|plot|stats|bench|help> [ARGS...]"
        );
        for spec in COMMANDS {
            assert!(
                help.contains(&format!("\n  {}", spec.name)),
                "{}",
                spec.name
            );
            assert_eq!(topic_named(spec.name), Some(spec.topic));
            assert_eq!(parse_ok(&["help", spec.name]), Command::Help(spec.topic));
            assert!(spec
                .topic
                .help()
                .starts_with(&format!("usage: metrics {} ", spec.name)));
            assert!(spec
                .topic
                .usage()
                .starts_with(&format!("usage: metrics {} ", spec.name)));
            assert!(!spec.topic.usage().contains('\n'));
        }
        assert!(Topic::Bench.usage().contains("[--timeout SECS]"));
        assert_eq!(
            Topic::Put.usage(),
            "usage: metrics put [-h] [--addr HOST:PORT] [--timeout SECS] [--max-line-bytes N] \
             METRIC VALUE [TIMESTAMP] | -"
        );
        assert!(Topic::Put
            .help()
            .starts_with("usage: metrics put [OPTIONS] METRIC VALUE [TIMESTAMP]\n       metrics put [OPTIONS] -\n"));
    }

    #[test]
    fn addresses_that_cannot_work_are_usage_errors() {
        for addr in [
            "127.0.0.1:99999",
            "::1",
            "",
            "localhost",
            "host:",
            ":8888",
            "h:0",
            "::1:8888",
            "[]:1",
        ] {
            let e = parse_err(&["get", "--addr", addr, "m"]);
            assert!(e.message.starts_with("invalid address"), "{addr}: {e}");
            assert_eq!(e.topic, Topic::Get);
        }
        for addr in [
            "127.0.0.1:1",
            "[::1]:8888",
            "localhost:8888",
            "example.com:65535",
        ] {
            assert!(parse(&["get", "--addr", addr, "m"], None).is_ok(), "{addr}");
        }
        let e = parse(&["put", "m", "1"], Some("127.0.0.1:99999")).unwrap_err();
        assert!(e.message.contains("in METRICS_ADDR"), "{e}");
        assert!(parse(&["bench", "--addr", "::1"], None).is_err());
    }

    #[test]
    fn a_timeout_under_a_nanosecond_is_a_usage_error() {
        for args in [
            &["get", "--timeout", "1e-12", "m"][..],
            &["bench", "--timeout", "1e-10"],
            &["server", "--idle-timeout", "1e-10"],
            &["server", "--write-timeout", "1e-10"],
        ] {
            assert!(
                parse_err(args).message.contains("under a nanosecond"),
                "{args:?}"
            );
        }
        match parse_ok(&["get", "--timeout", "1e-9", "m"]) {
            Command::Get { connect, .. } => {
                assert_eq!(connect.timeout, Some(Duration::from_nanos(1)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn put_dash_takes_a_line_limit() {
        match parse_ok(&["put", "--max-line-bytes", "40", "-"]) {
            Command::PutStdin { max_line_bytes, .. } => assert_eq!(max_line_bytes, 40),
            other => panic!("{other:?}"),
        }
        match parse_ok(&["put", "-"]) {
            Command::PutStdin { max_line_bytes, .. } => assert_eq!(max_line_bytes, 65536),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["put", "--max-line-bytes", "0", "-"], None).is_err());
        assert!(parse(&["put", "--max-line-bytes", "9", "m", "1"], None).is_err());
    }

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot frob")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("disk full")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
    impl Error for Inner {}

    #[test]
    fn an_error_prints_with_its_sources() {
        assert_eq!(chain(&Outer(Inner)), "cannot frob: disk full");
        assert_eq!(chain(&Inner), "disk full");
        let e = bulk::BulkError::Interrupted {
            stored: 2,
            source: crate::client::ClientError::Io(io::Error::other("reset")),
        };
        assert_eq!(
            chain(&e),
            "stopped after at least 2 lines were stored: connection failed: reset"
        );
    }
}
