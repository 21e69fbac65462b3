//! The command line: argv to [`Command`], running it, printing, and exit codes.
//!
//! Exit codes are a contract: 0 success, 1 runtime failure (`metrics: ...` on stderr), 2 usage
//! error (a message and a one-line usage hint on stderr, decided before any connection).
//! Data goes to stdout, diagnostics to stderr, `--help` to stdout; a closed stdout is not an error.

use crate::bench::{self, BenchConfig, Workload};
use crate::bulk;
use crate::client::Client;
use crate::defaults::{self, ADDR_ENV};
use crate::journal::Fsync;
use crate::protocol::{self, RequestError};
use crate::server::{Config, Server};
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
    Bench,
}

impl Topic {
    fn usage(self) -> &'static str {
        match self {
            Topic::Main => "usage: metrics <server|put|get|help> [ARGS...]",
            Topic::Server => "usage: metrics server [PORT] [--host ADDR] [--data FILE] [--fsync always|everysec|no] [--retention DURATION] [--max-line-bytes N] [--max-connections N] [--idle-timeout SECS] [--write-timeout SECS]",
            Topic::Put => "usage: metrics put [--addr HOST:PORT] [--timeout SECS] METRIC VALUE [TIMESTAMP] | -",
            Topic::Get => "usage: metrics get [--addr HOST:PORT] [--timeout SECS] METRIC",
            Topic::Bench => "usage: metrics bench [--addr HOST:PORT] [-c N] [-n N] [-P N] [--keys N] [--workload put|get|mixed]",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Topic::Main => HELP_MAIN,
            Topic::Server => HELP_SERVER,
            Topic::Put => HELP_PUT,
            Topic::Get => HELP_GET,
            Topic::Bench => HELP_BENCH,
        }
    }
}

const HELP_MAIN: &str = "\
metrics: a small, fast metric collection server and its client

usage: metrics <command> [ARGS...]

commands:
  server [PORT]                   serve metrics over TCP (default port 8888)
  put METRIC VALUE [TIMESTAMP]    store one point (timestamp defaults to now)
  put -                           store the 'metric value [timestamp]' lines of stdin
  get METRIC                      print a metric's points; '*' prints every metric
  bench                           measure a server's throughput and latency
  help [COMMAND]                  show help for a command

options:
  -h, --help                      show help
  -V, --version                   show the version

Client commands read the server address from --addr, else $METRICS_ADDR, else 127.0.0.1:8888.
Exit codes: 0 success, 1 runtime failure, 2 usage error.
";

const HELP_SERVER: &str = "\
usage: metrics server [PORT] [OPTIONS]

Serves the metrics protocol on PORT (default 8888; 0 picks a free port). Prints
'listening on ADDR:PORT' on stdout once bound; logs go to stderr.

options:
  --host ADDR              address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)
  --data FILE              append every put to FILE and replay it at start-up
                           (default: memory only)
  --fsync MODE             with --data: always, everysec or no (default everysec)
  --retention DURATION     forget points older than DURATION: seconds, or a number
                           with s, m, h or d (default: keep everything)
  --max-line-bytes N       longest request line (default 65536)
  --max-connections N      most clients served at once (default 1024)
  --idle-timeout SECS      close connections silent this long (default 0 = never)
  --write-timeout SECS     close connections that take no reply bytes this long (default 30)
";

const HELP_PUT: &str = "\
usage: metrics put [OPTIONS] METRIC VALUE [TIMESTAMP]
       metrics put [OPTIONS] -

Stores VALUE for METRIC at TIMESTAMP (whole seconds since the epoch; default now).
Prints nothing on success.

With '-', reads lines 'metric value [timestamp]' from stdin (what 'metrics get'
prints; Graphite's plaintext format) and sends them pipelined over one connection.
Each rejected line is reported on stderr with its line number, and the exit code
is then 1; every other line is stored.

options:
  --addr HOST:PORT         server address (default $METRICS_ADDR, else 127.0.0.1:8888)
  --timeout SECS           connect, read and write timeout (default 15; 0 = none)
";

const HELP_BENCH: &str = "\
usage: metrics bench [OPTIONS]

Loads a server the way redis-benchmark does and prints requests per second, latency
p50/p99/max and errors. Put requests write increasing timestamps to each key.

options:
  --addr HOST:PORT         server address (default $METRICS_ADDR, else 127.0.0.1:8888)
  --timeout SECS           connect, read and write timeout (default 15; 0 = none)
  -c, --connections N      connections (default 50)
  -n, --requests N         requests in all (default 100000)
  -P, --pipeline N         requests per batch on a connection (default 1)
  --keys N                 distinct metrics (default 1000)
  --workload KIND          put, get, or mixed (9 puts to 1 get) (default put)
";

const HELP_GET: &str = "\
usage: metrics get [OPTIONS] METRIC

Prints METRIC's points as 'metric value timestamp' lines, oldest first; '*' prints
every metric, sorted by name. This is also Graphite's plaintext format.

options:
  --addr HOST:PORT         server address (default $METRICS_ADDR, else 127.0.0.1:8888)
  --timeout SECS           connect, read and write timeout (default 15; 0 = none)
";

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
    },
    Get {
        connect: Connect,
        metric: String,
    },
    Bench(BenchConfig),
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
    /// `--name`, `--name=value`, or one of the command's short flags such as `-h`.
    Option(&'a str),
    Positional(&'a str),
}

/// A small argument lexer. Only `--name` and a command's known short flags are options, so
/// negative numbers (`-2.25`) and `-` stay positional; `--` ends the options.
struct Args<'a> {
    rest: std::slice::Iter<'a, &'a str>,
    inline: Option<&'a str>,
    options_done: bool,
    topic: Topic,
}

impl<'a> Args<'a> {
    fn new(args: &'a [&'a str], topic: Topic) -> Self {
        Args {
            rest: args.iter(),
            inline: None,
            options_done: false,
            topic,
        }
    }

    fn next(&mut self, shorts: &[&str]) -> Result<Option<Arg<'a>>, UsageError> {
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
            return self.next(shorts);
        }
        if let Some(long) = arg.strip_prefix("--") {
            return Ok(Some(match long.split_once('=') {
                Some((name, value)) => {
                    self.inline = Some(value);
                    Arg::Option(&arg[..name.len() + 2])
                }
                None => Arg::Option(arg),
            }));
        }
        Ok(Some(if shorts.contains(&arg) {
            Arg::Option(arg)
        } else {
            Arg::Positional(arg)
        }))
    }

    /// The value of the option just read: `--name=value` or the next argument.
    fn value(&mut self, name: &str) -> Result<&'a str, UsageError> {
        if let Some(value) = self.inline.take() {
            return Ok(value);
        }
        match self.rest.next() {
            Some(&value) => Ok(value),
            None => Err(self.error(format!("{name} needs a value"))),
        }
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str) -> Result<T, UsageError> {
        let text = self.value(name)?;
        text.parse()
            .map_err(|_| self.error(format!("invalid value for {name}: '{text}'")))
    }

    /// Seconds, possibly fractional; 0 means none.
    fn seconds(&mut self, name: &str) -> Result<Option<Duration>, UsageError> {
        let text = self.value(name)?;
        let secs: f64 = text.parse().unwrap_or(f64::NAN);
        if !(0.0..=1e9).contains(&secs) {
            return Err(self.error(format!("invalid value for {name}: '{text}' (seconds)")));
        }
        Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
    }

    fn error(&self, message: String) -> UsageError {
        UsageError {
            message,
            topic: self.topic,
        }
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

fn topic_named(name: &str) -> Option<Topic> {
    match name {
        "server" => Some(Topic::Server),
        "put" => Some(Topic::Put),
        "get" => Some(Topic::Get),
        "bench" => Some(Topic::Bench),
        _ => None,
    }
}

/// Reads a command line (without the program name). `env_addr` is `$METRICS_ADDR`.
///
/// # Errors
/// A [`UsageError`] for anything that cannot run: unknown command or option, wrong number of
/// arguments, a value or timestamp that is not a number, a value that is not finite.
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
    let main = Args::new(&[], Topic::Main);
    let Some((&command, rest)) = args.split_first() else {
        return Err(main.error("no command given".into()));
    };
    match command {
        "-h" | "--help" => Ok(Command::Help(Topic::Main)),
        "-V" | "--version" => Ok(Command::Version),
        "help" => match rest {
            [] => Ok(Command::Help(Topic::Main)),
            [name] => topic_named(name)
                .map(Command::Help)
                .ok_or_else(|| main.error(format!("no help for unknown command '{name}'"))),
            _ => Err(main.error("help takes at most one command".into())),
        },
        "server" => parse_server(rest),
        "put" | "get" => parse_client(command, rest, env_addr),
        "bench" => parse_bench(rest, env_addr),
        _ => Err(main.error(format!("unknown command '{command}'"))),
    }
}

fn parse_server(args: &[&str]) -> Result<Command, UsageError> {
    let mut args = Args::new(args, Topic::Server);
    let mut config = Config::default();
    let mut port = None;
    while let Some(arg) = args.next(&["-h"])? {
        match arg {
            Arg::Option("-h" | "--help") => return Ok(Command::Help(Topic::Server)),
            Arg::Option("--host") => config.host = args.value("--host")?.to_string(),
            Arg::Option("--max-line-bytes") => {
                config.max_line_bytes = args.number("--max-line-bytes")?;
                if config.max_line_bytes == 0 {
                    return Err(args.error("--max-line-bytes must be at least 1".into()));
                }
            }
            Arg::Option("--max-connections") => {
                config.max_connections = args.number("--max-connections")?;
                if config.max_connections == 0 {
                    return Err(args.error("--max-connections must be at least 1".into()));
                }
            }
            Arg::Option("--idle-timeout") => {
                config.idle_timeout = args.seconds("--idle-timeout")?
            }
            Arg::Option("--data") => config.data = Some(args.value("--data")?.into()),
            Arg::Option("--fsync") => {
                let text = args.value("--fsync")?;
                config.fsync = Fsync::parse(text).ok_or_else(|| {
                    args.error(format!(
                        "unknown --fsync mode '{text}' (always, everysec or no)"
                    ))
                })?;
            }
            Arg::Option("--retention") => {
                let text = args.value("--retention")?;
                config.retention = Some(parse_duration(text).ok_or_else(|| {
                    args.error(format!(
                        "invalid --retention '{text}' (seconds, or a number with s, m, h or d)"
                    ))
                })?);
            }
            Arg::Option("--write-timeout") => {
                config.write_timeout = args
                    .seconds("--write-timeout")?
                    .ok_or_else(|| args.error("--write-timeout must be more than 0".into()))?;
            }
            Arg::Option(other) => return Err(args.error(format!("unknown option '{other}'"))),
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

fn parse_client(
    command: &str,
    args: &[&str],
    env_addr: Option<&str>,
) -> Result<Command, UsageError> {
    let topic = if command == "put" {
        Topic::Put
    } else {
        Topic::Get
    };
    let mut args = Args::new(args, topic);
    let mut addr = None;
    let mut timeout = Some(defaults::TIMEOUT);
    let mut positional = Vec::new();
    while let Some(arg) = args.next(&["-h"])? {
        match arg {
            Arg::Option("-h" | "--help") => return Ok(Command::Help(topic)),
            Arg::Option("--addr") => addr = Some(args.value("--addr")?.to_string()),
            Arg::Option("--timeout") => timeout = args.seconds("--timeout")?,
            Arg::Option(other) => return Err(args.error(format!("unknown option '{other}'"))),
            Arg::Positional(text) => positional.push(text),
        }
    }
    let connect = Connect {
        addr: server_addr(addr, env_addr),
        timeout,
    };
    let check_metric = |metric: &str, for_put| match protocol::check_metric(metric, for_put) {
        Err(problem) => Err(args.error(problem.to_string())),
        Ok(()) => Ok(metric.to_string()),
    };
    match (topic, positional.as_slice()) {
        (Topic::Put, ["-"]) => Ok(Command::PutStdin { connect }),
        (Topic::Put, [metric, value, rest @ ..]) if rest.len() <= 1 => {
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
        }),
        _ => Err(args.error(format!("wrong number of arguments for '{command}'"))),
    }
}

/// The server address: `--addr`, else `$METRICS_ADDR`, else the default.
fn server_addr(flag: Option<String>, env_addr: Option<&str>) -> String {
    flag.or_else(|| env_addr.filter(|a| !a.is_empty()).map(String::from))
        .unwrap_or_else(|| defaults::ADDR.to_string())
}

fn parse_bench(args: &[&str], env_addr: Option<&str>) -> Result<Command, UsageError> {
    let mut args = Args::new(args, Topic::Bench);
    let mut config = BenchConfig::default();
    let mut addr = None;
    while let Some(arg) = args.next(&["-h", "-c", "-n", "-P"])? {
        match arg {
            Arg::Option("-h" | "--help") => return Ok(Command::Help(Topic::Bench)),
            Arg::Option("--addr") => addr = Some(args.value("--addr")?.to_string()),
            Arg::Option("--timeout") => config.timeout = args.seconds("--timeout")?,
            Arg::Option("-c" | "--connections") => config.connections = args.number("-c")?,
            Arg::Option("-n" | "--requests") => config.requests = args.number("-n")?,
            Arg::Option("-P" | "--pipeline") => config.pipeline = args.number("-P")?,
            Arg::Option("--keys") => config.keys = args.number("--keys")?,
            Arg::Option("--workload") => {
                let text = args.value("--workload")?;
                config.workload = Workload::parse(text).ok_or_else(|| {
                    args.error(format!("unknown workload '{text}' (put, get or mixed)"))
                })?;
            }
            Arg::Option(other) => return Err(args.error(format!("unknown option '{other}'"))),
            Arg::Positional(text) => {
                return Err(args.error(format!("unexpected argument '{text}'")))
            }
        }
    }
    if config.connections == 0 || config.pipeline == 0 || config.keys == 0 {
        return Err(args.error("-c, -P and --keys must be at least 1".into()));
    }
    config.addr = server_addr(addr, env_addr);
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

fn usage_failure(e: &UsageError) -> ExitCode {
    eprintln!("metrics: {e}\n{}", e.topic.usage());
    ExitCode::from(2)
}

fn failure(message: impl fmt::Display) -> ExitCode {
    eprintln!("metrics: {message}");
    ExitCode::FAILURE
}

fn execute(command: Command) -> ExitCode {
    match command {
        Command::Help(topic) => print_quietly(topic.help()),
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
            Err(e) => failure(e),
        },
        Command::PutStdin { connect } => put_stdin(&connect),
        Command::Get { connect, metric } => get(&connect, &metric),
        Command::Bench(config) => match bench::run(&config) {
            Ok(report) if report.errors == 0 => print_quietly(&report.to_string()),
            Ok(report) => {
                print_quietly(&report.to_string());
                failure(format!("{} requests failed", report.errors))
            }
            Err(e) => failure(e),
        },
    }
}

/// Prints to stdout; a reader that went away is not an error.
fn print_quietly(text: &str) -> ExitCode {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => failure(e),
        _ => ExitCode::SUCCESS,
    }
}

fn serve(config: Config) -> ExitCode {
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => return failure(e),
    };
    let addr = match server.local_addr() {
        Ok(addr) => addr,
        Err(e) => return failure(format!("cannot read the listening address: {e}")),
    };
    let mut stdout = io::stdout().lock();
    // Scripts and tests wait for this line; a closed stdout must not stop the server.
    let _ = writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush());
    drop(stdout);
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(e),
    }
}

fn put_stdin(connect: &Connect) -> ExitCode {
    let stdin = io::stdin().lock();
    match bulk::put_lines(
        stdin,
        &connect.addr,
        connect.timeout,
        &bulk::report_to_stderr,
    ) {
        // Each rejected line has been reported already.
        Ok(summary) if summary.rejected == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => failure(e),
    }
}

fn get(connect: &Connect, metric: &str) -> ExitCode {
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut line = Vec::with_capacity(128);
    let mut write_error = None;
    let result = Client::connect(connect.addr.as_str(), connect.timeout).and_then(|mut client| {
        client.get_each(metric, |name, value, timestamp| {
            line.clear();
            protocol::write_point(&mut line, name, value, timestamp);
            match out.write_all(&line) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    write_error = Some(e);
                    ControlFlow::Break(())
                }
            }
        })
    });
    let flushed = match write_error {
        Some(e) => Err(e),
        None => out.flush(),
    };
    match (result, flushed) {
        (_, Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        (_, Err(e)) => failure(format!("cannot write output: {e}")),
        (Err(e), Ok(())) => failure(e),
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
    }
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
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30d"), Some(Duration::from_secs(2_592_000)));
        for bad in ["", "0", "-5", "1.5h", "h", "5w", "99999999999999999999d"] {
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
    }
}
