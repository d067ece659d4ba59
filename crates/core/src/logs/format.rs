//! How a line of an instance's output is written to its log file: as it is, behind herd's
//! RFC 3339 stamp (`--time`), behind a date in PM2's `log_date_format` (dayjs tokens), or as
//! one JSON object the way PM2's `log_type: json` writes it. It owns no file.

use chrono::{DateTime, Datelike, Local, Offset as _, Timelike, Utc};
use herd_proto::{AppSpec, LogSpec, LogStream};
use serde::Serialize;

/// How each line is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFormat {
    /// As the app wrote it.
    Raw,
    /// herd's `--time`: an RFC 3339 UTC time with milliseconds and a space.
    Stamped,
    /// PM2's `log_date_format`: the local time in that format, `: `, the line.
    Dated(DateFormat),
    /// PM2's `log_type: json`: `{"message","timestamp","type","process_id","app_name"}`, the
    /// time in `date` when given, else ISO 8601 UTC.
    Json {
        /// PM2's `log_date_format`, for the `timestamp` field.
        date: Option<DateFormat>,
    },
}

/// Whose line it is, for the JSON format.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// App name.
    pub app: &'a str,
    /// Instance number ([`AppSpec::PRIMARY`] for the primary).
    pub instance: u32,
    /// Which stream.
    pub stream: LogStream,
}

/// PM2's JSON line, fields in PM2's order.
#[derive(Serialize)]
struct JsonLine<'a> {
    message: String,
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'a str,
    process_id: serde_json::Value,
    app_name: &'a str,
}

impl LineFormat {
    /// The format an app's spec asks for; `log_type: json` wins over a date prefix, which wins
    /// over `--time`.
    pub fn of(spec: &LogSpec) -> Self {
        let date = spec.date_format.as_deref().map(DateFormat::parse);
        if spec.json {
            return Self::Json { date };
        }
        match date {
            Some(d) => Self::Dated(d),
            None if spec.timestamps => Self::Stamped,
            None => Self::Raw,
        }
    }

    /// Whether lines are written as they come.
    pub fn is_raw(&self) -> bool {
        matches!(self, Self::Raw)
    }

    /// Appends `line` (without its newline) as it is written to the file, newline included.
    pub fn write(&self, out: &mut Vec<u8>, line: &[u8], who: Origin<'_>) {
        match self {
            Self::Raw => {}
            Self::Stamped => {
                out.extend_from_slice(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now())
                        .to_string()
                        .as_bytes(),
                );
                out.push(b' ');
            }
            Self::Dated(d) => {
                out.extend_from_slice(d.format(&Local::now()).as_bytes());
                out.extend_from_slice(b": ");
            }
            Self::Json { date } => {
                let timestamp = match date {
                    Some(d) => d.format(&Local::now()),
                    None => Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                };
                let mut message = String::from_utf8_lossy(line).into_owned();
                // PM2 writes each chunk the app wrote, `console.log`'s newline included.
                message.push('\n');
                let entry = JsonLine {
                    message,
                    timestamp,
                    kind: match who.stream {
                        LogStream::Out => "out",
                        LogStream::Err => "err",
                    },
                    process_id: if who.instance == AppSpec::PRIMARY {
                        "primary".into()
                    } else {
                        who.instance.into()
                    },
                    app_name: who.app,
                };
                // A struct of strings and numbers always serializes.
                if serde_json::to_writer(&mut *out, &entry).is_ok() {
                    out.push(b'\n');
                }
                return;
            }
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
}

/// A dayjs / moment format string (PM2's `log_date_format`), parsed once.
///
/// Tokens: `YYYY YY M MM MMM MMMM D DD d dd ddd dddd H HH h hh m mm s ss SSS Z ZZ A a`, and
/// `[text]` for text taken as it is; every other character stands for itself, as in dayjs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFormat(Vec<Token>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Text(String),
    Year4,
    Year2,
    Month,
    Month2,
    MonthShort,
    MonthLong,
    Day,
    Day2,
    Weekday,
    WeekdayMin,
    WeekdayShort,
    WeekdayLong,
    Hour,
    Hour2,
    Hour12,
    Hour12Two,
    Minute,
    Minute2,
    Second,
    Second2,
    Millis,
    /// `+01:00`
    Offset,
    /// `+0100`
    OffsetCompact,
    Meridiem,
    MeridiemLower,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

impl DateFormat {
    /// Reads a format; it cannot fail (what is no token is text, as in dayjs).
    pub fn parse(format: &str) -> Self {
        let mut tokens = Vec::new();
        let mut text = String::new();
        let chars: Vec<char> = format.chars().collect();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            if c == '[' {
                if let Some(end) = chars.iter().skip(i + 1).position(|&x| x == ']') {
                    text.extend(chars.iter().skip(i + 1).take(end));
                    i += end + 2;
                    continue;
                }
            }
            let run = chars.iter().skip(i).take_while(|&&x| x == c).count();
            let (token, used) = match (c, run) {
                ('Y', 4..) => (Some(Token::Year4), 4),
                ('Y', 2..) => (Some(Token::Year2), 2),
                ('M', 4..) => (Some(Token::MonthLong), 4),
                ('M', 3) => (Some(Token::MonthShort), 3),
                ('M', 2) => (Some(Token::Month2), 2),
                ('M', _) => (Some(Token::Month), 1),
                ('D', 2..) => (Some(Token::Day2), 2),
                ('D', _) => (Some(Token::Day), 1),
                ('d', 4..) => (Some(Token::WeekdayLong), 4),
                ('d', 3) => (Some(Token::WeekdayShort), 3),
                ('d', 2) => (Some(Token::WeekdayMin), 2),
                ('d', _) => (Some(Token::Weekday), 1),
                ('H', 2..) => (Some(Token::Hour2), 2),
                ('H', _) => (Some(Token::Hour), 1),
                ('h', 2..) => (Some(Token::Hour12Two), 2),
                ('h', _) => (Some(Token::Hour12), 1),
                ('m', 2..) => (Some(Token::Minute2), 2),
                ('m', _) => (Some(Token::Minute), 1),
                ('s', 2..) => (Some(Token::Second2), 2),
                ('s', _) => (Some(Token::Second), 1),
                ('S', 3..) => (Some(Token::Millis), 3),
                ('Z', 2..) => (Some(Token::OffsetCompact), 2),
                ('Z', _) => (Some(Token::Offset), 1),
                ('A', _) => (Some(Token::Meridiem), 1),
                ('a', _) => (Some(Token::MeridiemLower), 1),
                _ => (None, 1),
            };
            match token {
                Some(t) => {
                    if !text.is_empty() {
                        tokens.push(Token::Text(std::mem::take(&mut text)));
                    }
                    tokens.push(t);
                    i += used;
                }
                None => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text));
        }
        Self(tokens)
    }

    /// `t` in this format.
    pub fn format<Tz: chrono::TimeZone>(&self, t: &DateTime<Tz>) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let month = t.month0() as usize;
        let weekday = t.weekday().num_days_from_sunday() as usize;
        let hour12 = match t.hour() % 12 {
            0 => 12,
            h => h,
        };
        let offset = t.offset().fix().local_minus_utc() / 60;
        let sign = if offset < 0 { '-' } else { '+' };
        let (oh, om) = (offset.abs() / 60, offset.abs() % 60);
        let month_name = MONTHS.get(month).copied().unwrap_or_default();
        let weekday_name = WEEKDAYS.get(weekday).copied().unwrap_or_default();
        for token in &self.0 {
            let _ = match token {
                Token::Text(x) => write!(s, "{x}"),
                Token::Year4 => write!(s, "{:04}", t.year()),
                Token::Year2 => write!(s, "{:02}", t.year().rem_euclid(100)),
                Token::Month => write!(s, "{}", month + 1),
                Token::Month2 => write!(s, "{:02}", month + 1),
                Token::MonthShort => write!(s, "{}", month_name.get(..3).unwrap_or_default()),
                Token::MonthLong => write!(s, "{month_name}"),
                Token::Day => write!(s, "{}", t.day()),
                Token::Day2 => write!(s, "{:02}", t.day()),
                Token::Weekday => write!(s, "{weekday}"),
                Token::WeekdayMin => write!(s, "{}", weekday_name.get(..2).unwrap_or_default()),
                Token::WeekdayShort => {
                    write!(s, "{}", weekday_name.get(..3).unwrap_or_default())
                }
                Token::WeekdayLong => write!(s, "{weekday_name}"),
                Token::Hour => write!(s, "{}", t.hour()),
                Token::Hour2 => write!(s, "{:02}", t.hour()),
                Token::Hour12 => write!(s, "{hour12}"),
                Token::Hour12Two => write!(s, "{hour12:02}"),
                Token::Minute => write!(s, "{}", t.minute()),
                Token::Minute2 => write!(s, "{:02}", t.minute()),
                Token::Second => write!(s, "{}", t.second()),
                Token::Second2 => write!(s, "{:02}", t.second()),
                Token::Millis => write!(s, "{:03}", t.timestamp_subsec_millis().min(999)),
                Token::Offset => write!(s, "{sign}{oh:02}:{om:02}"),
                Token::OffsetCompact => write!(s, "{sign}{oh:02}{om:02}"),
                Token::Meridiem => write!(s, "{}", if t.hour() < 12 { "AM" } else { "PM" }),
                Token::MeridiemLower => {
                    write!(s, "{}", if t.hour() < 12 { "am" } else { "pm" })
                }
            };
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, TimeZone};

    fn at() -> DateTime<FixedOffset> {
        FixedOffset::east_opt(5 * 3600 + 30 * 60)
            .unwrap()
            .with_ymd_and_hms(2024, 3, 7, 14, 5, 9)
            .unwrap()
            + chrono::Duration::milliseconds(42)
    }

    #[test]
    fn dayjs_tokens_format_as_dayjs_does() {
        let f = |s: &str| DateFormat::parse(s).format(&at());
        assert_eq!(f("YYYY-MM-DD HH:mm Z"), "2024-03-07 14:05 +05:30");
        assert_eq!(f("YYYY-MM-DDTHH:mm:ss"), "2024-03-07T14:05:09");
        assert_eq!(f("YY/M/D h:m:s.SSS A a ZZ"), "24/3/7 2:5:9.042 PM pm +0530");
        assert_eq!(f("dddd ddd dd d, MMMM MMM"), "Thursday Thu Th 4, March Mar");
        assert_eq!(f("[YYYY at] HH[h]"), "YYYY at 14h");
        // What is no token stands for itself.
        assert_eq!(f("Q W x"), "Q W x");
    }

    #[test]
    fn a_json_line_has_pm2s_fields_in_pm2s_order() {
        let mut out = Vec::new();
        let who = Origin {
            app: "api",
            instance: 2,
            stream: LogStream::Err,
        };
        LineFormat::Json { date: None }.write(&mut out, b"boom \"x\"", who);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        assert!(
            text.starts_with(r#"{"message":"boom \"x\"\n","timestamp":""#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "err");
        assert_eq!(v["process_id"], 2);
        assert_eq!(v["app_name"], "api");
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
    }

    #[test]
    fn a_dated_line_is_the_date_a_colon_and_the_line() {
        let mut out = Vec::new();
        let who = Origin {
            app: "api",
            instance: 0,
            stream: LogStream::Out,
        };
        LineFormat::Dated(DateFormat::parse("[d]")).write(&mut out, b"hi", who);
        assert_eq!(out, b"d: hi\n");
    }
}
