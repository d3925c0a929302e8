//! A tiny WGSL preprocessor: `#include "file"`, `#if NAME`, `#else`, `#endif`, nothing else.
//!
//! Variants that change types, bindings or structure (f16 vs f32, one weight format or
//! another) are written once with `#if` blocks; numeric settings use WGSL `override`s instead.
//! Includes resolve from an embedded table, never from the file system, so the same code runs
//! in the browser.

use super::GpuError;

/// Expands `file` (looked up in `sources`, a table of `(path, text)`), keeping the lines whose
/// `#if` conditions hold for `defines`. A name is true when it is in `defines`.
pub fn preprocess(
    file: &str,
    sources: &[(&str, &str)],
    defines: &[&str],
) -> Result<String, GpuError> {
    let mut out = String::new();
    expand(file, sources, defines, &mut out, &mut Vec::new())?;
    Ok(out)
}

fn expand(
    file: &str,
    sources: &[(&str, &str)],
    defines: &[&str],
    out: &mut String,
    include_stack: &mut Vec<String>,
) -> Result<(), GpuError> {
    let err = |message: String| GpuError::Preprocess {
        file: file.to_string(),
        message,
    };
    if include_stack.iter().any(|f| f == file) {
        return Err(err(format!(
            "include cycle: {}",
            include_stack.join(" -> ")
        )));
    }
    let text = sources
        .iter()
        .find(|(path, _)| *path == file)
        .map(|(_, text)| *text)
        .ok_or_else(|| err("no such shader file in the embedded table".into()))?;
    include_stack.push(file.to_string());
    // One entry per open `#if`: (this branch is taken, some enclosing branch is not taken).
    let mut open: Vec<(bool, bool)> = Vec::new();
    let active = |open: &[(bool, bool)]| {
        open.last()
            .is_none_or(|&(taken, outer_off)| taken && !outer_off)
    };
    for (line_no, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let Some(directive) = trimmed.strip_prefix('#') else {
            if active(&open) {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        };
        let at = |m: &str| err(format!("line {}: {m}", line_no + 1));
        let mut words = directive.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("if"), Some(name), None) => {
                let outer_off = !active(&open);
                open.push((defines.contains(&name), outer_off));
            }
            (Some("else"), None, None) => {
                let top = open.last_mut().ok_or_else(|| at("#else without #if"))?;
                top.0 = !top.0;
            }
            (Some("endif"), None, None) => {
                open.pop().ok_or_else(|| at("#endif without #if"))?;
            }
            (Some("include"), Some(path), None) => {
                let path = path
                    .strip_prefix('"')
                    .and_then(|p| p.strip_suffix('"'))
                    .ok_or_else(|| at("#include needs a quoted path"))?;
                if active(&open) {
                    expand(path, sources, defines, out, include_stack)?;
                }
            }
            _ => return Err(at(&format!("unknown directive `{trimmed}`"))),
        }
    }
    if !open.is_empty() {
        return Err(err(format!("{} #if without #endif", open.len())));
    }
    include_stack.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCES: &[(&str, &str)] = &[
        ("main.wgsl", "a\n#if F16\nhalf\n#if X\nx\n#else\nnot x\n#endif\n#else\nfull\n#endif\n#include \"common/c.wgsl\"\nz\n"),
        ("common/c.wgsl", "c\n"),
        ("cycle.wgsl", "#include \"cycle.wgsl\"\n"),
        ("bad.wgsl", "#if A\n"),
        ("unknown.wgsl", "#define A 1\n"),
    ];

    #[test]
    fn branches_and_includes() {
        let out = preprocess("main.wgsl", SOURCES, &[]).unwrap();
        assert_eq!(out, "a\nfull\nc\nz\n");
        let out = preprocess("main.wgsl", SOURCES, &["F16"]).unwrap();
        assert_eq!(out, "a\nhalf\nnot x\nc\nz\n");
        let out = preprocess("main.wgsl", SOURCES, &["F16", "X"]).unwrap();
        assert_eq!(out, "a\nhalf\nx\nc\nz\n");
        // An #if inside a branch not taken stays off whatever its own condition.
        let out = preprocess("main.wgsl", SOURCES, &["X"]).unwrap();
        assert_eq!(out, "a\nfull\nc\nz\n");
    }

    #[test]
    fn errors_name_the_problem() {
        for (file, needle) in [
            ("cycle.wgsl", "include cycle"),
            ("bad.wgsl", "without #endif"),
            ("unknown.wgsl", "unknown directive"),
            ("missing.wgsl", "no such shader file"),
        ] {
            let e = preprocess(file, SOURCES, &[]).unwrap_err().to_string();
            assert!(e.contains(needle), "{file}: {e}");
        }
    }
}
