//! The checkpoint wire format: [`MachineSnapshot`] and [`LaunchIntent`], written as JSON the
//! way the reference (`flatmachines` 1.0.0) writes it.
//!
//! The reference builds a snapshot with `json.dumps(dataclasses.asdict(snapshot))`. So a written
//! snapshot has every field, in declaration order, with `null` for absent optional values; and
//! it uses Python's default `json.dumps` style: `", "` and `": "` separators, non-ASCII characters
//! escaped as `\u` sequences (`ensure_ascii`), and floats spelled like Python's `repr` (`1e+16`,
//! `1e-05`, `100.0`). [`MachineSnapshot::to_json_vec`] reproduces that byte for byte, so a file
//! written here is indistinguishable from one the reference wrote.
//!
//! Reading is lenient: optional fields may be missing or `null`, unknown fields are ignored.

use std::io;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Context;

/// One checkpoint of a machine run (the reference's `MachineSnapshot` dataclass).
///
/// Field order is the wire order; do not reorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineSnapshot {
    /// The run's execution id (a UUID v4 in the reference).
    pub execution_id: String,
    /// The machine's `data.name`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub machine_name: String,
    /// The machine file's `spec_version`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec_version: String,
    /// The state the run is in (the reference writes `"start"` for `machine_start` and `"end"`
    /// for `machine_end`).
    pub current_state: String,
    /// The machine context at this point.
    #[serde(default, deserialize_with = "null_as_default")]
    pub context: Context,
    /// The step counter (0 for `machine_start`, then 1, 2, ... per state entered).
    pub step: u64,
    /// When the snapshot was made: UTC, Python `isoformat()` style
    /// (`2026-11-24T19:22:17.123456+00:00`). See [`utc_now_isoformat`].
    #[serde(default = "utc_now_isoformat", deserialize_with = "created_at_or_now")]
    pub created_at: String,
    /// The checkpoint event (`machine_start`, `state_enter`, `execute`, `state_exit`,
    /// `machine_end`; see [`super::checkpoint_event`]).
    #[serde(default)]
    pub event: Option<String>,
    /// The output: set on the final state's `state_exit` and on `machine_end`.
    #[serde(default)]
    pub output: Option<Context>,
    /// Cumulative agent (API) calls of the run.
    #[serde(default)]
    pub total_api_calls: Option<u64>,
    /// Cumulative cost of the run.
    #[serde(default)]
    pub total_cost: Option<f64>,
    /// The execution id of the machine that launched this one, if any.
    #[serde(default)]
    pub parent_execution_id: Option<String>,
    /// Launch intents recorded before launching children (outbox pattern); `None` when there
    /// are none (the reference writes `null`, never `[]`).
    #[serde(default)]
    pub pending_launches: Option<Vec<LaunchIntent>>,
    /// The channel the run waits on: set on the `waiting` checkpoint of a `wait_for` state
    /// (the reference 4.2.1's field). Not written when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_channel: Option<String>,
    /// The fingerprint of the machine's shape (`fm-shape1:…`; the reference 4.2.1 writes the
    /// SHA-256 of its config text under the same name): a resume, signal or fork with a build
    /// of another shape is refused unless the caller opts in. Not written when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// When a waiting run gives up (`timeout` of its `wait_for` state), UTC, `isoformat()`
    /// style; on `waiting` checkpoints only. Not written when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_deadline: Option<String>,
    /// The execution and step this run was forked from. Not written when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<ForkOrigin>,
    /// The fencing token of the execution lock held when the snapshot was made (locks that
    /// issue them: `RedisLock`). Not written when `None`, so snapshots stay byte-identical to
    /// the reference's; a store that checks it refuses snapshots older than the newest token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
}

impl MachineSnapshot {
    /// A snapshot with the required fields, `created_at` set to now and every optional field
    /// `None`.
    pub fn new(
        execution_id: impl Into<String>,
        machine_name: impl Into<String>,
        spec_version: impl Into<String>,
        current_state: impl Into<String>,
        context: Context,
        step: u64,
    ) -> Self {
        Self {
            execution_id: execution_id.into(),
            machine_name: machine_name.into(),
            spec_version: spec_version.into(),
            current_state: current_state.into(),
            context,
            step,
            created_at: utc_now_isoformat(),
            event: None,
            output: None,
            total_api_calls: None,
            total_cost: None,
            parent_execution_id: None,
            pending_launches: None,
            waiting_channel: None,
            config_hash: None,
            wait_deadline: None,
            forked_from: None,
            fencing_token: None,
        }
    }

    /// Sets [`event`](Self::event) (builder style).
    pub fn with_event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into());
        self
    }

    /// The snapshot as the reference writes it (see the [module docs](self)).
    pub fn to_json_vec(&self) -> Result<Vec<u8>, serde_json::Error> {
        to_python_json(self)
    }

    /// [`to_json_vec`](Self::to_json_vec) for a backend storing the snapshot under `key`; a
    /// failure is a [`PersistenceError::Serialize`](super::PersistenceError::Serialize) naming it.
    pub fn to_json_for(&self, key: &str) -> Result<Vec<u8>, super::PersistenceError> {
        self.to_json_vec()
            .map_err(|source| super::PersistenceError::Serialize {
                key: key.to_owned(),
                source,
            })
    }

    /// Parses a snapshot (leniently: missing or `null` optional fields are accepted).
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Where a forked execution came from: the execution and the step of the checkpoint it was
/// copied from (written into every checkpoint of the fork).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOrigin {
    /// The execution forked.
    pub execution_id: String,
    /// The step of the checkpoint the fork started from.
    pub step: u64,
}

/// A child launch recorded in a snapshot before it happens (the reference's `LaunchIntent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchIntent {
    /// The child's execution id.
    pub execution_id: String,
    /// The child machine's name (key in the parent's `machines:`).
    pub machine: String,
    /// The child's input.
    #[serde(default, deserialize_with = "null_as_default")]
    pub input: Context,
    /// Whether the launch happened.
    #[serde(default, deserialize_with = "null_as_default")]
    pub launched: bool,
}

impl LaunchIntent {
    /// A not-yet-launched intent.
    pub fn new(
        execution_id: impl Into<String>,
        machine: impl Into<String>,
        input: Context,
    ) -> Self {
        Self {
            execution_id: execution_id.into(),
            machine: machine.into(),
            input,
            launched: false,
        }
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn created_at_or_now<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_else(utc_now_isoformat))
}

/// The current UTC time as Python's `datetime.now(timezone.utc).isoformat()` writes it:
/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, without the fraction when the microseconds are 0.
pub fn utc_now_isoformat() -> String {
    super::encoded::IsoTimestamp::now().as_str().to_owned()
}

/// Formats seconds + microseconds since the Unix epoch (UTC) like Python's `isoformat()`.
#[cfg(test)]
fn format_isoformat(secs: u64, micros: u32) -> String {
    super::encoded::IsoTimestamp::from_parts(secs, micros)
        .as_str()
        .to_owned()
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Serializes `value` as Python's `json.dumps(value)` does with default arguments (see the
/// [module docs](self)). Non-finite floats become `null` (Python would write `NaN`, which is
/// not JSON).
pub fn to_python_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    write_python_json(&mut out, value)?;
    Ok(out)
}

/// Deepest nesting of arrays and objects the checkpoint writer accepts in one serialized part
/// (a whole snapshot, or a context, output or outbox spliced into one): 126 levels. A snapshot
/// therefore nests at most 127 levels, the most `serde_json` parses back, so every checkpoint
/// written can be loaded; a deeper one is refused when written
/// ([`PersistenceError::Serialize`](super::PersistenceError::Serialize) naming this limit)
/// instead of leaving an execution that cannot resume. Values entering a run from outside are
/// held to [`MAX_JSON_DEPTH`](crate::agents::output::MAX_JSON_DEPTH) (64), far below it.
pub const MAX_WRITE_DEPTH: usize = 126;

/// [`to_python_json`] appending to `out`.
pub(crate) fn write_python_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let mut serializer = serde_json::Serializer::with_formatter(out, PythonFormatter::default());
    value.serialize(&mut serializer)
}

/// `serde_json` formatter reproducing Python's `json.dumps` defaults, refusing nesting deeper
/// than [`MAX_WRITE_DEPTH`].
#[derive(Default)]
struct PythonFormatter {
    depth: usize,
}

impl PythonFormatter {
    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        if self.depth > MAX_WRITE_DEPTH {
            return Err(io::Error::other(format!(
                "the value nests arrays/objects more than {MAX_WRITE_DEPTH} levels deep, more than a checkpoint can hold and load back"
            )));
        }
        w.write_all(bracket)
    }
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth -= 1;
        w.write_all(b"]")
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth -= 1;
        w.write_all(b"}")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has already escaped `"`, `\` and control characters; Python's
        // `ensure_ascii` also escapes DEL and everything outside ASCII (as UTF-16 units).
        if fragment.is_ascii() && !fragment.as_bytes().contains(&0x7f) {
            return w.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c == '\x7f' || !c.is_ascii() {
                w.write_all(&fragment.as_bytes()[start..i])?;
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        // Where Python writes positional notation, Rust's `Display` gives the same shortest
        // round-trip digits; Python adds `.0` to integral values.
        let magnitude = value.abs();
        if value.is_finite() && (magnitude == 0.0 || (1e-4..1e16).contains(&magnitude)) {
            return if value.fract() == 0.0 {
                write!(w, "{value:.1}")
            } else {
                write!(w, "{value}")
            };
        }
        w.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        w.write_all(python_float_repr(f64::from(value)).as_bytes())
    }
}

/// Python's `repr(float)` for a finite value: shortest round-trip digits; scientific notation
/// (`1e+16`, `1.5e-07`) when the decimal exponent is below -4 or at least 16, else positional
/// with at least one fractional digit (`100.0`, `0.0001`).
fn python_float_repr(value: f64) -> String {
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-5", "1e16", "0e0".
    let sci = format!("{value:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        let dot_rest = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        return format!(
            "{sign}{first}{dot_rest}e{exp_sign}{:02}",
            exponent.unsigned_abs()
        );
    }
    // Positional: the decimal point goes after `exponent + 1` digits.
    let point = exponent + 1;
    if point <= 0 {
        let zeros = "0".repeat(point.unsigned_abs() as usize);
        format!("{sign}0.{zeros}{digits}")
    } else {
        let point = point as usize;
        if digits.len() <= point {
            let zeros = "0".repeat(point - digits.len());
            format!("{sign}{digits}{zeros}.0")
        } else {
            let (int, frac) = digits.split_at(point);
            format!("{sign}{int}.{frac}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (2.5, "2.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (1e-05, "1e-05"),
            (-1.25e-7, "-1.25e-07"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value:?}");
        }
    }

    #[test]
    fn float_writer_matches_repr() {
        for value in [
            0.0,
            -0.0,
            0.1,
            1.0,
            100.0,
            2.5,
            1e15,
            9_999_999_999_999_998.0,
            1e16,
            0.0001,
            0.00011,
            1e-05,
            -1.25e-7,
            123456789012345.6,
            0.30000000000000004,
            -7.0,
            1.5e300,
        ] {
            let written = to_python_json(&value).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                python_float_repr(value),
                "{value:?}"
            );
        }
    }

    #[test]
    fn isoformat_matches_python() {
        // datetime.fromtimestamp(1795547737.123456, timezone.utc).isoformat()
        assert_eq!(
            format_isoformat(1_795_547_737, 123_456),
            "2026-11-24T19:15:37.123456+00:00"
        );
        assert_eq!(format_isoformat(0, 0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            format_isoformat(951_782_400, 1),
            "2000-02-29T00:00:00.000001+00:00"
        );
    }
}
