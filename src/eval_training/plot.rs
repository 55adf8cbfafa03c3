//! PNG line plots of training curves (with the `plotters` crate, pure Rust).
//!
//! Text is rendered with a TrueType font found at run time: the file named by
//! `$LOPT_PLOT_FONT`, else a common system sans-serif font (DejaVu Sans, Liberation Sans,
//! Arial, Helvetica). Without one the plot is still drawn, with lines, axes and mesh but
//! no text ([`font_available`] tells which).
//!
//! ```no_run
//! use lopt::eval_training::plot::{plot_png, Line, Panel};
//! let line = Line::new("loss", vec![0.0, 1.0, 2.0], vec![2.3, 1.1, 0.7]);
//! plot_png("target/lopt-plots/example.png".as_ref(), &[Panel::new("training", "loss", vec![line])])?;
//! # Ok::<(), lopt::Error>(())
//! ```

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Error, Result};

/// The environment variable naming a `.ttf` file for plot text.
pub const FONT_ENV: &str = "LOPT_PLOT_FONT";

/// Fonts tried, in order, when `$LOPT_PLOT_FONT` is not set.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Line colors (the "tab10" palette): distinct on white, none pale.
const COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The family name the font is registered under.
const FONT: &str = "sans-serif";

/// Whether plot text can be drawn (a font was found and registered; looked up once).
pub fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let from_env = std::env::var_os(FONT_ENV).map(std::path::PathBuf::from);
        let paths = from_env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(std::path::PathBuf::from));
        for path in paths {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process; leaked once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One named line: points `(xs[i], ys[i])`; non-finite points are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The legend label.
    pub label: String,
    /// X coordinates.
    pub xs: Vec<f64>,
    /// Y coordinates.
    pub ys: Vec<f64>,
}

impl Line {
    /// A line from its label and coordinates.
    pub fn new(label: impl Into<String>, xs: Vec<f64>, ys: Vec<f64>) -> Self {
        Line {
            label: label.into(),
            xs,
            ys,
        }
    }

    fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.xs
            .iter()
            .zip(&self.ys)
            .map(|(&x, &y)| (x, y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    }
}

/// One chart: a title, a y-axis label and its lines (x is the training step).
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// The chart's caption.
    pub title: String,
    /// The y-axis description.
    pub y_label: String,
    /// The lines.
    pub lines: Vec<Line>,
}

impl Panel {
    /// A panel from its title, y label and lines.
    pub fn new(title: impl Into<String>, y_label: impl Into<String>, lines: Vec<Line>) -> Self {
        Panel {
            title: title.into(),
            y_label: y_label.into(),
            lines,
        }
    }
}

/// Draws `panels` side by side (each 640×480) into a PNG at `path`, creating parent
/// directories.
///
/// Errors: [`Error::InvalidArgument`] for no panels; [`Error::Io`] when the file cannot
/// be written or drawing fails.
pub fn plot_png(path: &Path, panels: &[Panel]) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::InvalidArgument("plot_png: no panels".into()));
    }
    let io = |e: String| Error::Io {
        path: path.display().to_string(),
        message: e,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
    }
    let text = font_available();
    let size = (640 * panels.len() as u32, 480);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| io(e.to_string()))?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel, text).map_err(io)?;
    }
    root.present().map_err(|e| io(e.to_string()))?;
    Ok(())
}

/// Range of the finite values, widened when degenerate and padded by 5%.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5 * lo.abs().max(1.0)
    };
    (lo - pad, hi + pad)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    text: bool,
) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let (x0, x1) = range(panel.lines.iter().flat_map(|l| l.points().map(|p| p.0)));
    let (y0, y1) = range(panel.lines.iter().flat_map(|l| l.points().map(|p| p.1)));
    let mut builder = ChartBuilder::on(area);
    builder.margin(12);
    if text {
        builder
            .caption(&panel.title, (FONT, 18))
            .x_label_area_size(36)
            .y_label_area_size(56);
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("step")
            .y_desc(panel.y_label.as_str())
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FONT, 13));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| err(&e))?;
    for (i, line) in panel.lines.iter().enumerate() {
        let (r, g, b) = COLORS[i % COLORS.len()];
        let color = RGBColor(r, g, b).to_rgba();
        let series = chart
            .draw_series(LineSeries::new(line.points(), color.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if text {
            series
                .label(line.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
    }
    if text && !panel.lines.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    Ok(())
}
