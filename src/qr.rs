//! QR codes as inline SVG, for the pages and API answers that show one (OTP codes, enrollment
//! codes). Pure rendering; may import nothing from this crate.

use qrcode::QrCode;
use qrcode::render::svg;

/// An inline `<svg class="qr">` of `text`, at least 200 px square, with no inline style (the
/// pages' CSP forbids it). `None` when the text does not fit in a QR code.
pub fn svg(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(svg::Color("#000"))
        .light_color(svg::Color("#fff"))
        .build();
    let start = image.find("<svg")?;
    let rest = image.get(start + "<svg".len()..)?;
    Some(format!(
        r#"<svg class="qr" role="img" aria-label="QR code"{rest}"#
    ))
}
