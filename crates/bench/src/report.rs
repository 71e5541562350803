//! Figures, their targets, and the table people read.

/// What a figure is held against.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    AtLeast(f64),
    AtMost(f64),
    Within(f64, f64),
}

impl Target {
    pub(crate) fn bounds(self) -> (Option<f64>, Option<f64>) {
        match self {
            Self::AtLeast(t) => (Some(t), None),
            Self::AtMost(t) => (None, Some(t)),
            Self::Within(lo, hi) => (Some(lo), Some(hi)),
        }
    }

    pub(crate) fn met(self, v: f64) -> bool {
        match self {
            Self::AtLeast(t) => v >= t,
            Self::AtMost(t) => v <= t,
            Self::Within(lo, hi) => (lo..=hi).contains(&v),
        }
    }

    pub(crate) fn text(self, unit: &str) -> String {
        match self {
            Self::AtLeast(t) => format!(">= {} {unit}", fmt_value(t)),
            Self::AtMost(t) => format!("<= {} {unit}", fmt_value(t)),
            Self::Within(lo, hi) => format!("{}–{} {unit}", fmt_value(lo), fmt_value(hi)),
        }
    }
}

/// One reported number.
#[derive(serde::Serialize)]
pub(crate) struct Figure {
    /// Stable id for scripts: `<scenario>.<name>`.
    pub(crate) key: String,
    pub(crate) scenario: &'static str,
    pub(crate) figure: String,
    /// NaN (JSON null) when it could not be measured.
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    /// The target as people read it ("<= 6.00 cmds"), and its bounds for scripts.
    pub(crate) target: Option<String>,
    pub(crate) target_min: Option<f64>,
    pub(crate) target_max: Option<f64>,
    pub(crate) met: Option<bool>,
    /// A detail of the figure above it (indented in the table).
    #[serde(skip)]
    pub(crate) detail: bool,
}

/// Thousands separators for big numbers, a few significant digits for small ones.
pub(crate) fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if a >= 1_000.0 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn print_table(figures: &[Figure]) {
    let rows: Vec<[String; 5]> = figures
        .iter()
        .map(|f| {
            [
                f.scenario.to_owned(),
                if f.detail {
                    format!("  {}", f.figure)
                } else {
                    f.figure.clone()
                },
                format!("{} {}", fmt_value(f.value), f.unit),
                f.target.clone().unwrap_or_default(),
                match f.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let header = ["scenario", "figure", "value", "target", "met?"];
    let mut width = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(width)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w - c.chars().count());
                // Values right-aligned, the rest left-aligned.
                if i == 2 {
                    format!("{pad}{c}")
                } else {
                    format!("{c}{pad}")
                }
            })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&header.map(str::to_owned));
    println!(
        "|{}|",
        width
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 2 {
                format!("{}:", "-".repeat(w + 1))
            } else {
                "-".repeat(w + 2)
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_well() {
        assert_eq!(fmt_value(1_234_567.4), "1,234,567");
        assert_eq!(fmt_value(512.3), "512");
        assert_eq!(fmt_value(12.34), "12.3");
        assert_eq!(fmt_value(1.234), "1.23");
        assert_eq!(fmt_value(f64::NAN), "n/a");
    }

    #[test]
    fn targets() {
        assert!(Target::AtLeast(10.0).met(10.0));
        assert!(!Target::AtMost(6.0).met(6.5));
        assert!(Target::Within(80.0, 120.0).met(95.0));
        assert!(!Target::Within(80.0, 120.0).met(f64::NAN));
    }
}
