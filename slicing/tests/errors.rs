//! Bad input gives an error that names the value and the valid range, never a panic.

use seqpipe_slicing::*;

fn cost() -> CostModel {
    CostModel::flops(&preset("llama-7b").unwrap()).unwrap()
}

fn message(e: SlicingError) -> String {
    e.to_string()
}

#[test]
fn zero_lengths_and_counts() {
    let c = cost();
    let m = message(balanced(0, 4, 1, &c).unwrap_err());
    assert!(
        m.contains("sequence length must be at least 1, got 0"),
        "{m}"
    );
    let m = message(uniform(100, 0, 1, Padding::None, &c).unwrap_err());
    assert!(
        m.contains("number of slices must be at least 1, got 0"),
        "{m}"
    );
    let m = message(balanced(100, 2, 0, &c).unwrap_err());
    assert!(
        m.contains("rounding multiple must be at least 1, got 0"),
        "{m}"
    );
}

#[test]
fn more_slices_than_tokens() {
    let m = message(balanced(3, 4, 1, &cost()).unwrap_err());
    assert!(m.contains("3 tokens into 4 slices"), "{m}");
    assert!(m.contains("between 1 and 3"), "{m}");
}

#[test]
fn rounding_that_empties_a_slice() {
    let e = uniform(1000, 8, 256, Padding::None, &cost()).unwrap_err();
    assert!(
        matches!(
            e,
            SlicingError::EmptySliceAfterRounding {
                multiple: 256,
                largest_valid: 125,
                ..
            }
        ),
        "{e}"
    );
    let e = balanced(1000, 8, 256, &cost()).unwrap_err();
    let SlicingError::EmptySliceAfterRounding { largest_valid, .. } = e else {
        panic!("{e}")
    };
    assert!(largest_valid > 0 && balanced(1000, 8, largest_valid, &cost()).is_ok());
    let e = uniform(100, 8, 128, Padding::ToMultiple, &cost()).unwrap_err();
    let m = message(e);
    assert!(m.contains("only padding"), "{m}");
}

#[test]
fn non_finite_and_negative_coefficients() {
    for (a1, a2, b) in [
        (f64::NAN, 1.0, 0.0),
        (1.0, f64::INFINITY, 0.0),
        (1.0, 1.0, -1.0),
    ] {
        let m = message(CostModel::fitted(a1, a2, b).unwrap_err());
        assert!(m.contains("must be finite and non-negative"), "{m}");
    }
    assert_eq!(
        CostModel::fitted(0.0, 0.0, 1.0).unwrap_err(),
        SlicingError::ZeroCost
    );
    let m = message(cost().with_backward_factor(f64::NAN).unwrap_err());
    assert!(m.contains("backward_factor"), "{m}");
}

#[test]
fn token_counts_as_text() {
    assert_eq!(parse_token_count("65536").unwrap(), 65536);
    assert_eq!(parse_token_count("64k").unwrap(), 65536);
    assert_eq!(parse_token_count("2M").unwrap(), 2 * 1024 * 1024);
    for bad in ["-5", "1.5k", "", "k", "12x"] {
        let m = message(parse_token_count(bad).unwrap_err());
        assert!(
            m.contains(&format!("`{bad}`")) && m.contains("e.g. 65536, 64k"),
            "{m}"
        );
    }
    let m = message(parse_token_count("0k").unwrap_err());
    assert!(m.contains("token count must be at least 1, got 0k"), "{m}");
}

#[test]
fn bad_shapes_and_presets() {
    let mut s = preset("llama-70b").unwrap();
    s.kv_heads = 7;
    let m = message(CostModel::flops(&s).unwrap_err());
    assert!(
        m.contains("kv_heads = 7") && m.contains("divide the number of query heads (64)"),
        "{m}"
    );
    s.layers = 0;
    assert!(message(s.validate().unwrap_err()).contains("layers = 0"));
    let m = message(preset("llama-71b").unwrap_err());
    assert!(m.contains("llama-71b") && m.contains("llama-70b"), "{m}");
}
