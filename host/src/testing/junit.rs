//! JUnit XML of `weir test` results, as CI systems read it: one `testsuite` per test file,
//! one `testcase` per test, a `failure` with every expectation that did not hold.

use super::FileOutcome;

/// Text escaped for XML attributes and content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML document of `files`.
pub fn junit(files: &[FileOutcome]) -> String {
    let total: usize = files.iter().map(|f| f.tests.len().max(usize::from(f.error.is_some()))).sum();
    let failed: usize =
        files.iter().map(|f| if f.error.is_some() { 1 } else { f.tests.iter().filter(|t| !t.failures.is_empty()).count() }).sum();
    let mut xml =
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"weir test\" tests=\"{total}\" failures=\"{failed}\">\n");
    for f in files {
        let name = escape(&f.file.display().to_string());
        let seconds: f64 = f.tests.iter().map(|t| t.elapsed.as_secs_f64()).sum();
        let failures = f.tests.iter().filter(|t| !t.failures.is_empty()).count();
        if let Some(e) = &f.error {
            xml.push_str(&format!(
                "  <testsuite name=\"{name}\" tests=\"1\" failures=\"1\">\n    <testcase name=\"(file)\" classname=\"{name}\">\n"
            ));
            xml.push_str(&format!("      <failure message=\"{}\">{}</failure>\n    </testcase>\n  </testsuite>\n", escape(e), escape(e)));
            continue;
        }
        xml.push_str(&format!("  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">\n", f.tests.len()));
        for t in &f.tests {
            let open = format!("    <testcase name=\"{}\" classname=\"{name}\" time=\"{:.3}\"", escape(&t.name), t.elapsed.as_secs_f64());
            match t.failures.first() {
                None => xml.push_str(&format!("{open}/>\n")),
                Some(first) => {
                    let first_line = first.lines().next().unwrap_or_default();
                    xml.push_str(&format!(
                        "{open}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                        escape(first_line),
                        escape(&t.failures.join("\n"))
                    ));
                }
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Outcome;
    use std::time::Duration;

    #[test]
    fn failures_are_escaped_and_counted() {
        let files = [FileOutcome {
            file: "p/a.test.yaml".into(),
            pipeline: None,
            error: None,
            tests: vec![
                Outcome { name: "passes".into(), failures: vec![], elapsed: Duration::from_millis(5) },
                Outcome {
                    name: "fails <x>".into(),
                    failures: vec!["sink file: at /a: expected \"1\", got 2 & more".into()],
                    elapsed: Duration::ZERO,
                },
            ],
        }];
        let xml = junit(&files);
        assert!(xml.contains("<testsuites name=\"weir test\" tests=\"2\" failures=\"1\">"), "{xml}");
        assert!(xml.contains("<testcase name=\"passes\" classname=\"p/a.test.yaml\" time=\"0.005\"/>"), "{xml}");
        assert!(xml.contains("name=\"fails &lt;x&gt;\""), "{xml}");
        assert!(xml.contains("expected &quot;1&quot;, got 2 &amp; more"), "{xml}");
    }
}
