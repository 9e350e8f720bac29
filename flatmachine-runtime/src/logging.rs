//! Logging configured from the environment, as the reference's `setup_logging` reads it
//! (feature `cli`; [`cli::main`](crate::cli::main) calls [`init`], and an application can
//! too):
//!
//! | variable | values | default |
//! | --- | --- | --- |
//! | `RUST_LOG` | `tracing` filter directives (`info`, `flatmachine_runtime=debug,warn`, ...); takes precedence over `FLATAGENTS_LOG_LEVEL` | unset |
//! | `FLATAGENTS_LOG_LEVEL` | `DEBUG`, `INFO`, `WARNING` (or `WARN`), `ERROR`, `CRITICAL` (as `ERROR`), `TRACE`; any case | `INFO` |
//! | `FLATAGENTS_LOG_FORMAT` | `standard` (time, level, target, message), `json` (one object a line: `timestamp`, `level`, `target`, `fields`), `simple` (level and message) | `standard` |
//! | `FLATAGENTS_LOG_DIR` | a directory (created if missing): every record is also written to `flatagents_<pid>_<YYYYmmdd_HHMMSS>.log` there (UTC time) | unset |
//!
//! Records go to stderr (the reference writes them to stdout, where the CLI prints the run's
//! output).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt};

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Time, level, target and message (`standard`).
    #[default]
    Standard,
    /// One JSON object per record (`json`).
    Json,
    /// Level and message (`simple`).
    Simple,
}

/// The logging settings read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `tracing` filter directives (`RUST_LOG`, else the level).
    pub filter: String,
    /// The record format.
    pub format: LogFormat,
    /// The directory log files go to, if any.
    pub dir: Option<PathBuf>,
}

/// A logging variable with a value this module does not know.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `FLATAGENTS_LOG_LEVEL` is not a level.
    #[error(
        "FLATAGENTS_LOG_LEVEL=`{0}` is not a level: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )]
    Level(String),
    /// `FLATAGENTS_LOG_FORMAT` is not a format.
    #[error(
        "FLATAGENTS_LOG_FORMAT=`{0}` is not a format: use standard, json or simple (custom format strings are not supported)"
    )]
    Format(String),
    /// `RUST_LOG` does not parse.
    #[error("RUST_LOG does not parse: {0}")]
    Filter(String),
    /// The log directory or file cannot be created.
    #[error("cannot write logs to {path}: {error}")]
    Dir {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A global subscriber is already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadySet,
}

impl LogSettings {
    /// The settings the process environment gives.
    pub fn from_env() -> Result<Self, LoggingError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings `var` (a lookup of environment variables) gives.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, LoggingError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let level = match set("FLATAGENTS_LOG_LEVEL") {
            None => "info",
            Some(l) => match l.trim().to_ascii_uppercase().as_str() {
                "TRACE" => "trace",
                "DEBUG" => "debug",
                "INFO" => "info",
                "WARNING" | "WARN" => "warn",
                "ERROR" | "CRITICAL" | "FATAL" => "error",
                _ => return Err(LoggingError::Level(l)),
            },
        };
        let filter = match set("RUST_LOG") {
            Some(directives) => {
                EnvFilter::try_new(&directives).map_err(|e| LoggingError::Filter(e.to_string()))?;
                directives
            }
            None => level.to_string(),
        };
        let format = match set("FLATAGENTS_LOG_FORMAT") {
            None => LogFormat::Standard,
            Some(f) => match f.trim().to_ascii_lowercase().as_str() {
                "standard" => LogFormat::Standard,
                "json" => LogFormat::Json,
                "simple" => LogFormat::Simple,
                _ => return Err(LoggingError::Format(f)),
            },
        };
        Ok(Self {
            filter,
            format,
            dir: set("FLATAGENTS_LOG_DIR").map(PathBuf::from),
        })
    }

    /// A subscriber writing to stderr (and to a file in [`dir`](Self::dir), whose path is
    /// returned), for [`tracing::subscriber::set_global_default`] or `with_default`.
    pub fn subscriber(
        &self,
    ) -> Result<(Box<dyn tracing::Subscriber + Send + Sync>, Option<PathBuf>), LoggingError> {
        let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
            vec![self.layer(std::io::stderr, true)];
        let file = match &self.dir {
            Some(dir) => {
                let (file, path) = open_log_file(dir)?;
                layers.push(self.layer(Arc::new(file), false));
                Some(path)
            }
            None => None,
        };
        Ok((Box::new(Registry::default().with(layers)), file))
    }

    fn layer<W>(&self, writer: W, terminal: bool) -> Box<dyn Layer<Registry> + Send + Sync>
    where
        W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        // Checked in `from_vars`; a filter that no longer parses logs nothing.
        let filter = EnvFilter::try_new(&self.filter).unwrap_or_else(|_| EnvFilter::new("off"));
        let ansi = terminal && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let base = fmt::layer().with_writer(writer).with_ansi(ansi);
        match self.format {
            LogFormat::Standard => base.with_filter(filter).boxed(),
            LogFormat::Json => base.json().with_filter(filter).boxed(),
            LogFormat::Simple => base
                .without_time()
                .with_target(false)
                .with_filter(filter)
                .boxed(),
        }
    }
}

/// Installs the logging the environment asks for as the process's global subscriber.
/// Returns the log file's path when `FLATAGENTS_LOG_DIR` is set.
pub fn init() -> Result<Option<PathBuf>, LoggingError> {
    let (subscriber, file) = LogSettings::from_env()?.subscriber()?;
    tracing::subscriber::set_global_default(subscriber).map_err(|_| LoggingError::AlreadySet)?;
    if let Some(path) = &file {
        tracing::info!(path = %path.display(), "logging to file");
    }
    Ok(file)
}

fn open_log_file(dir: &Path) -> Result<(std::fs::File, PathBuf), LoggingError> {
    let err = |path: &Path, error| LoggingError::Dir {
        path: path.to_path_buf(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!(
        "flatagents_{}_{}.log",
        std::process::id(),
        utc_stamp(secs)
    ));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| err(&path, e))?;
    Ok((file, path))
}

/// `YYYYmmdd_HHMMSS` (UTC) of a Unix time.
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}_{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn levels_formats_and_rust_log_precedence() {
        let s = LogSettings::from_vars(vars(&[])).unwrap();
        assert_eq!(
            (s.filter.as_str(), s.format, s.dir),
            ("info", LogFormat::Standard, None)
        );
        let s = LogSettings::from_vars(vars(&[
            ("FLATAGENTS_LOG_LEVEL", "warning"),
            ("FLATAGENTS_LOG_FORMAT", "JSON"),
        ]))
        .unwrap();
        assert_eq!((s.filter.as_str(), s.format), ("warn", LogFormat::Json));
        let s = LogSettings::from_vars(vars(&[
            ("FLATAGENTS_LOG_LEVEL", "CRITICAL"),
            ("RUST_LOG", "flatmachine_runtime=debug"),
        ]))
        .unwrap();
        assert_eq!(s.filter, "flatmachine_runtime=debug");
        assert!(matches!(
            LogSettings::from_vars(vars(&[("FLATAGENTS_LOG_LEVEL", "LOUD")])),
            Err(LoggingError::Level(_))
        ));
        assert!(matches!(
            LogSettings::from_vars(vars(&[("FLATAGENTS_LOG_FORMAT", "%(message)s")])),
            Err(LoggingError::Format(_))
        ));
    }

    #[test]
    fn json_records_reach_the_log_file_filtered_by_level() {
        let dir = tempfile::tempdir().unwrap();
        let settings = LogSettings::from_vars(vars(&[
            ("FLATAGENTS_LOG_LEVEL", "WARNING"),
            ("FLATAGENTS_LOG_FORMAT", "json"),
            (
                "FLATAGENTS_LOG_DIR",
                dir.path().join("logs").to_str().unwrap(),
            ),
        ]))
        .unwrap();
        let (subscriber, file) = settings.subscriber().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not written");
            tracing::warn!(state = "review", "a warning");
        });
        let file = file.unwrap();
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with(&format!("flatagents_{}_", std::process::id())),
            "{name}"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["fields"]["message"], "a warning");
        assert_eq!(lines[0]["fields"]["state"], "review");
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101_000000");
        assert_eq!(utc_stamp(1_700_000_000), "20231114_221320");
        assert_eq!(utc_stamp(951_782_400), "20000229_000000");
    }
}
