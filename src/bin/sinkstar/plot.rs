//! PNG line plots of the CLI's CSV files: running perplexity against tokens seen (`ppl`; with
//! several policies overlaid, the StreamingLLM paper's Figure 3) and decode time against the
//! length of the history (scripts/decode_vs_history.py).
//!
//! plotters is built from pure-Rust parts only (no system font lookup, which needs C
//! libraries), so text is drawn with a TTF file read at run time: DejaVu Sans from Debian's
//! `fonts-dejavu-core`, or the file named by `$SINKSTAR_FONT`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use clap::Args;
use plotters::coord::combinators::IntoLogRange;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// Where Debian's fonts-dejavu-core puts DejaVu Sans.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Names another TTF file to draw text with.
const FONT_ENV: &str = "SINKSTAR_FONT";
const SIZE: (u32, u32) = (1200, 750);
/// Line colours, distinct on white (matplotlib's "tab10").
const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

#[derive(Args)]
pub struct PlotArgs {
    /// CSV files with a header row (as `ppl --csv` writes them); each becomes one line,
    /// labelled by its file name
    #[arg(required = true)]
    csv: Vec<PathBuf>,
    /// PNG file to write
    #[arg(long)]
    out: PathBuf,
    /// Column of the x axis
    #[arg(long, default_value = "tokens_seen")]
    x: String,
    /// Column of the y axis
    #[arg(long, default_value = "running_ppl")]
    y: String,
    /// Logarithmic x axis
    #[arg(long)]
    log_x: bool,
    /// Linear y axis [default: logarithmic, for perplexities]
    #[arg(long)]
    linear_y: bool,
    /// Mark every point (for short series, such as a few history lengths)
    #[arg(long)]
    markers: bool,
    /// Title [default: the y column against the x column]
    #[arg(long)]
    title: Option<String>,
    /// Label of the x axis [default: the column name]
    #[arg(long)]
    x_label: Option<String>,
    /// Label of the y axis [default: the column name]
    #[arg(long)]
    y_label: Option<String>,
}

/// One line of a plot.
pub struct Series {
    pub label: String,
    /// (x, y), in order of x.
    pub points: Vec<(f64, f64)>,
}

pub struct PlotStyle {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// A circle at every point, besides the line.
    pub markers: bool,
}

pub fn plot_command(args: &PlotArgs) -> anyhow::Result<()> {
    ensure_font()?;
    let series = args
        .csv
        .iter()
        .map(|path| read_series(path, &args.x, &args.y))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let style = PlotStyle {
        title: args
            .title
            .clone()
            .unwrap_or_else(|| format!("{} vs {}", args.y, args.x)),
        x_label: args.x_label.clone().unwrap_or_else(|| args.x.clone()),
        y_label: args.y_label.clone().unwrap_or_else(|| args.y.clone()),
        log_x: args.log_x,
        log_y: !args.linear_y,
        markers: args.markers,
    };
    draw(&args.out, &series, &style)?;
    eprintln!(
        "sinkstar: wrote {} ({} series)",
        args.out.display(),
        series.len()
    );
    Ok(())
}

/// The label of a CSV file's line: its file name without the extension.
pub fn label_of(path: &Path) -> String {
    path.file_stem()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Columns `x` and `y` of a CSV file with a header row. Rows whose `y` is empty or not a
/// number (`n/a`) are left out; a bad `x` is an error.
pub fn read_series(path: &Path, x: &str, y: &str) -> anyhow::Result<Series> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .with_context(|| format!("{} is empty: expected a header row", path.display()))?
        .split(',')
        .map(str::trim)
        .collect();
    let column = |name: &str| {
        header.iter().position(|&h| h == name).with_context(|| {
            format!(
                "{} has no column `{name}` (columns: {})",
                path.display(),
                header.join(", ")
            )
        })
    };
    let (ix, iy) = (column(x)?, column(y)?);
    let mut points = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |j: usize| fields.get(j).copied().unwrap_or("");
        let xv: f64 = field(ix).parse().with_context(|| {
            format!(
                "{} line {}: `{x}` is `{}`, expected a number",
                path.display(),
                i + 2,
                field(ix)
            )
        })?;
        if let Ok(yv) = field(iy).parse::<f64>() {
            points.push((xv, yv));
        }
    }
    Ok(Series {
        label: label_of(path),
        points,
    })
}

/// Registers the TTF font plotters draws all text with; once per process. Fails, naming the
/// file and the package, when the font is missing.
pub fn ensure_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = std::env::var_os(FONT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(FONT_PATH));
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read the font for plots, {} ({e}): install Debian's fonts-dejavu-core \
                 (apt-get install fonts-dejavu-core) or set {FONT_ENV} to a TTF file",
                path.display()
            )
        })?;
        // plotters keeps fonts for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
            format!(
                "{} is not a TrueType font plotters can read",
                path.display()
            )
        })
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Padded range over `values`: for a log axis only positive values count, and the ends go to
/// the enclosing powers of ten.
fn axis_range(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        let (lo_exp, hi_exp) = (lo.log10().floor(), hi.log10().ceil());
        return 10f64.powf(lo_exp)..10f64.powf(hi_exp.max(lo_exp + 1.0));
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.1
    };
    // Non-negative quantities (times, bytes) are drawn from zero.
    let start = if lo >= 0.0 { 0.0 } else { lo - pad };
    start..hi + pad
}

/// A tick value in few characters: `250`, `20k`, `1.5M`, `0.25`.
fn tick_label(v: f64) -> String {
    let a = v.abs();
    let short = |x: f64| {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if a >= 1e6 {
        format!("{}M", short(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", short(v / 1e3))
    } else if a >= 1.0 || a == 0.0 {
        short(v)
    } else {
        format!("{v:.2e}").replace(".00", "")
    }
}

/// Draws `series` as lines into the PNG file `out`.
pub fn draw(out: &Path, series: &[Series], style: &PlotStyle) -> anyhow::Result<()> {
    ensure_font()?;
    let points = || series.iter().flat_map(|s| s.points.iter());
    let xs = axis_range(points().map(|p| p.0), style.log_x);
    let ys = axis_range(points().map(|p| p.1), style.log_y);
    let result = match (style.log_x, style.log_y) {
        (false, false) => draw_on(out, series, style, xs, ys),
        (true, false) => draw_on(out, series, style, xs.log_scale(), ys),
        (false, true) => draw_on(out, series, style, xs, ys.log_scale()),
        (true, true) => draw_on(out, series, style, xs.log_scale(), ys.log_scale()),
    };
    result.with_context(|| format!("drawing {}", out.display()))
}

fn draw_on<X, Y>(
    out: &Path,
    series: &[Series],
    style: &PlotStyle,
    x_range: X,
    y_range: Y,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&style.title, ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(56)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .x_desc(&style.x_label)
        .y_desc(&style.y_label)
        .label_style(("sans-serif", 18))
        .axis_desc_style(("sans-serif", 20))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
        if style.markers {
            chart
                .draw_series(points.map(|p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(250.0), "250");
        assert_eq!(tick_label(12.5), "12.5");
        assert_eq!(tick_label(20000.0), "20k");
        assert_eq!(tick_label(1_500_000.0), "1.5M");
    }

    #[test]
    fn log_range_goes_to_powers_of_ten() {
        let r = axis_range([3.0, 250.0, -1.0, f64::NAN].into_iter(), true);
        assert_eq!(r, 1.0..1000.0);
    }

    #[test]
    fn linear_range_of_positive_values_starts_at_zero() {
        let r = axis_range([10.0, 20.0].into_iter(), false);
        assert_eq!(r.start, 0.0);
        assert!(r.end > 20.0);
    }
}
