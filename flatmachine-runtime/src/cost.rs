//! Costs in US dollars, kept free of binary rounding noise.
//!
//! A cost is a price per token (`0.000003`) times a token count, summed over calls, and binary
//! floating point turns `0.00054` into `0.0005399999999999999` along the way — which then shows
//! in results, checkpoints and the CLI. Every cost the runtime computes or adds up goes through
//! [`rounded`], which keeps 12 decimal places (a millionth of a micro-dollar, far below any
//! price) so the shortest decimal form is the one a person would write.

/// Decimal places kept.
const PLACES: f64 = 1e12;

/// `usd` rounded to 12 decimal places (values too large to scale are returned unchanged, and
/// so are NaN and infinities).
pub fn rounded(usd: f64) -> f64 {
    let scaled = usd * PLACES;
    if scaled.is_finite() && scaled.abs() < 1e15 {
        scaled.round() / PLACES
    } else {
        usd
    }
}

/// `total + more`, [`rounded`].
pub fn add(total: f64, more: f64) -> f64 {
    rounded(total + more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_print_as_written() {
        let per_call = rounded((97.0 * 0.001 + 34.0 * 0.002) / 1000.0);
        let mut total = 0.0;
        for _ in 0..3 {
            total = add(total, per_call);
        }
        assert_eq!(total.to_string(), "0.000495");
        assert_eq!(add(0.1, 0.2).to_string(), "0.3");
        assert_eq!(
            serde_json::json!(add(0.00027, 0.00027)).to_string(),
            "0.00054"
        );
        assert_eq!(rounded(1e9), 1e9);
        assert!(rounded(f64::NAN).is_nan());
    }
}
