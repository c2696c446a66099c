//! `agent-sidecar check`: run a policy over text the way the proxy would, so a policy
//! author can try it before it reaches a cluster.
//!
//! Exit status: 0 when nothing would be blocked, 1 when anything would be blocked or
//! escalated, 2 for a usage error or unreadable input.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;

use crate::guard::pii::HashKey;
use crate::guard::{Finding, Guard, Verdict};
use crate::policy::Policy;
use crate::policy::spec::Direction;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DirectionArg {
    Input,
    Output,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy file or directory; the embedded default policy when omitted.
    #[arg(long, env = "AGENT_SIDECAR_POLICY")]
    pub policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Read one JSON object per line and check its `text` field (or, with `tool` and
    /// `arguments`, a tool call); a `direction` field overrides --direction per line.
    #[arg(long)]
    pub jsonl: bool,
    /// Check the text as model input (what the agent sends) or output (what the model
    /// returns).
    #[arg(long, value_enum, default_value = "input")]
    pub direction: DirectionArg,
    /// File to read; standard input when omitted or `-`.
    pub file: Option<PathBuf>,
}

/// The result for one input, as printed.
#[derive(Debug, Serialize)]
struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool: Option<String>,
    findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(args: CheckArgs) -> ExitCode {
    let policy = match Policy::load_or_default(args.policy.as_deref()) {
        Ok(policy) => policy,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let input = match read_input(args.file.as_ref()) {
        Ok(input) => input,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    // Hash tokens in this command only need to be stable within one run.
    let guard = Guard::new(
        Arc::new(policy),
        Arc::new(HashKey::new(b"agent-sidecar-check")),
    );
    let direction = match args.direction {
        DirectionArg::Input => Direction::Input,
        DirectionArg::Output => Direction::Output,
    };

    let reports: Vec<Report> = if args.jsonl {
        input
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| check_line(&guard, direction, index + 1, line))
            .collect()
    } else {
        vec![check_text(&guard, direction, &input)]
    };

    let mut stdout = std::io::stdout().lock();
    for report in &reports {
        let written = match args.format {
            OutputFormat::Json => serde_json::to_string(report)
                .map_err(std::io::Error::other)
                .and_then(|line| writeln!(stdout, "{line}")),
            OutputFormat::Text => write_text(&mut stdout, report),
        };
        if written.is_err() {
            return ExitCode::from(super::EXIT_USAGE);
        }
    }
    if reports.iter().any(|r| r.error.is_some()) {
        ExitCode::from(super::EXIT_USAGE)
    } else if reports
        .iter()
        .any(|r| matches!(r.verdict, "block" | "escalate"))
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn read_input(file: Option<&PathBuf>) -> Result<String, String> {
    let mut bytes = Vec::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "input is not valid UTF-8 (invalid byte at offset {}); convert it to UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

fn check_text(guard: &Guard, direction: Direction, text: &str) -> Report {
    let mut verdict = Verdict::Allow;
    let mut findings = Vec::new();
    if direction == Direction::Input
        && let Some(finding) = guard.check_on_topic(&[text])
    {
        verdict.merge(Verdict::from_finding(&finding));
        findings.push(finding);
    }
    let check = guard.check_content(direction, &[text]);
    verdict.merge(check.verdict.clone());
    let transformed = check.text(0, text).to_owned();
    findings.extend(check.findings);
    Report {
        line: None,
        verdict: verdict.as_str(),
        text: Some(transformed),
        tool: None,
        findings,
        error: None,
    }
}

fn check_line(
    guard: &Guard,
    default_direction: Direction,
    line_number: usize,
    line: &str,
) -> Report {
    let error = |message: String| Report {
        line: Some(line_number),
        verdict: "error",
        text: None,
        tool: None,
        findings: Vec::new(),
        error: Some(message),
    };
    let value: Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(e) => return error(format!("line {line_number} is not JSON: {e}")),
    };
    let direction = match value.get("direction").and_then(Value::as_str) {
        None => default_direction,
        Some("input") => Direction::Input,
        Some("output") => Direction::Output,
        Some(other) => {
            return error(format!(
                "line {line_number}: invalid direction {other:?}; use input or output"
            ));
        }
    };
    if let Some(tool) = value.get("tool").and_then(Value::as_str) {
        let arguments = value
            .get("arguments")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let action = guard.check_action(direction, tool, Some(&arguments));
        // The proxy also runs the content rules over the arguments; so does this.
        let mut text = arguments.to_string();
        let content = crate::dialect::openai::guard_arguments(guard, direction, &mut text);
        let mut verdict = action.verdict;
        verdict.merge(content.verdict);
        let mut findings = action.findings;
        findings.extend(content.findings);
        return Report {
            line: Some(line_number),
            verdict: verdict.as_str(),
            text: Some(text),
            tool: Some(tool.to_owned()),
            findings,
            error: None,
        };
    }
    match value.get("text").and_then(Value::as_str) {
        Some(text) => Report {
            line: Some(line_number),
            ..check_text(guard, direction, text)
        },
        None => error(format!(
            "line {line_number} has no string field \"text\" (or \"tool\"); write {{\"text\": \"...\"}}"
        )),
    }
}

fn write_text(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let label = report
        .line
        .map(|line| format!("line {line}: "))
        .unwrap_or_default();
    if let Some(error) = &report.error {
        return writeln!(out, "{label}error: {error}");
    }
    match &report.tool {
        Some(tool) => writeln!(out, "{label}{} (tool {tool})", report.verdict)?,
        None => writeln!(out, "{label}{}", report.verdict)?,
    }
    for finding in &report.findings {
        let mut line = format!(
            "  - rule {} ({}) {} [{}]",
            finding.rule,
            finding.kind.as_str(),
            finding.outcome.as_str(),
            finding.mode.as_str()
        );
        if let Some(entity) = &finding.entity {
            line.push_str(&format!(" entity {entity}"));
        }
        if let (Some(start), Some(end)) = (finding.start, finding.end) {
            line.push_str(&format!(" bytes {start}..{end}"));
        }
        if let Some(detail) = &finding.detail {
            line.push_str(&format!(": {detail}"));
        }
        writeln!(out, "{line}")?;
    }
    if let Some(text) = &report.text
        && report.findings.iter().any(Finding::is_enforced)
    {
        writeln!(out, "  text: {text}")?;
    }
    Ok(())
}
