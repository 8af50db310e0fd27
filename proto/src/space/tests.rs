//! The space decoder's tests: parsing, grid order, bad spaces, sampling,
//! and property tests against a brute-force product.

use super::*;

fn grid(axes: &[&str]) -> Space {
    Space {
        axes: axes.iter().map(|a| Axis::parse(a).unwrap()).collect(),
        repeat: 1,
        sample: None,
    }
}

fn floats(s: &Space) -> Vec<Vec<f64>> {
    (0..s.len())
        .map(|i| {
            s.point(i)
                .iter()
                .map(|v| match v {
                    Value::Int(i) => *i as f64,
                    Value::Float(f) => *f,
                    Value::Text(_) => f64::NAN,
                })
                .collect()
        })
        .collect()
}

#[test]
fn axes_parse_like_python_and_numpy() {
    let one = |a: &str| {
        let s = grid(&[a]);
        s.validate(u64::MAX).unwrap();
        floats(&s).into_iter().map(|p| p[0]).collect::<Vec<_>>()
    };
    assert_eq!(one("x=range:0:5"), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(one("x=range:5:0:-2"), vec![5.0, 3.0, 1.0]);
    assert_eq!(one("x=range:0:1:0.25"), vec![0.0, 0.25, 0.5, 0.75]);
    assert_eq!(one("x=linspace:0:1:5"), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    assert_eq!(one("x=logspace:1e-4:1e-1:4"), vec![1e-4, 1e-3, 1e-2, 1e-1]);
    assert_eq!(one("x=linspace:3:7:1"), vec![3.0]);
    let s = grid(&["opt=adam,sgd", "lr=0.1,1"]);
    assert_eq!(s.point(1), vec![Value::Text("adam".into()), Value::Int(1)]);
    assert_eq!(s.point(2)[0], Value::Text("sgd".into()));
    assert_eq!(s.point(0)[1], Value::Float(0.1));
}

#[test]
fn whole_decades_are_the_decimal_literals() {
    for e in -299..=299 {
        let want: f64 = format!("1e{e}").parse().unwrap();
        assert_eq!(pow10(e as f64), want, "1e{e}");
    }
}

#[test]
fn grid_order_is_the_product_with_the_last_axis_fastest_then_rep() {
    let mut s = grid(&["a=1,2,3", "b=range:0:2", "c=x,y"]);
    s.repeat = 2;
    assert_eq!(s.validate(1_000).unwrap(), 24);
    assert_eq!(s.names(), vec!["a", "b", "c", "rep"]);
    let mut want = Vec::new();
    for a in [1, 2, 3] {
        for b in [0, 1] {
            for c in ["x", "y"] {
                for rep in [0, 1] {
                    want.push(vec![
                        Value::Int(a),
                        Value::Int(b),
                        Value::Text(c.into()),
                        Value::Int(rep),
                    ]);
                }
            }
        }
    }
    let got: Vec<_> = (0..24).map(|i| s.point(i)).collect();
    assert_eq!(got, want);
}

#[test]
fn bad_spaces_name_the_field() {
    let e = |axes: &[&str], repeat: u64, sample: Option<Sample>, max: u64| {
        let s = Space {
            axes: axes.iter().map(|a| Axis::parse(a).unwrap()).collect(),
            repeat,
            sample,
        };
        s.validate(max).unwrap_err().to_string()
    };
    assert!(e(&["lr=range:0:1:0"], 1, None, 100).contains("axes[lr]: range step must not be 0"));
    assert!(e(&["lr=range:5:0"], 1, None, 100).contains("axes[lr]: the axis has no values"));
    assert!(e(&["x=1", "x=2"], 1, None, 100).contains("given twice"));
    assert!(e(&["1x=1"], 1, None, 100).starts_with("axes: axis names"));
    assert!(e(&["rep=1"], 3, None, 100).contains("repeat axis"));
    assert!(e(&["x=uniform:0:1"], 1, None, 100).contains("need random search"));
    assert!(e(&["x=uniform:1:0"], 1, Some(Sample { n: 5, seed: 1 }), 100).contains("LOW < HIGH"));
    assert!(e(&["x=logspace:0:1:3"], 1, None, 100).contains("must be > 0"));
    assert!(e(&["x=range:0:1000", "y=range:0:1000"], 1, None, 100)
        .contains("1000000 points; at most 100"));
    assert!(e(
        &[
            "a=linspace:0:1:100000000",
            "b=linspace:0:1:100000000",
            "c=linspace:0:1:100000000"
        ],
        1,
        None,
        u64::MAX
    )
    .contains("overflows"));
    assert!(e(&["x=1"], 1, Some(Sample { n: 0, seed: 1 }), 100).starts_with("sample:"));
    assert!(Axis::parse("x")
        .unwrap_err()
        .to_string()
        .contains("NAME=VALUES"));
    assert!(Axis::parse("x=linspace:0:nan:3")
        .unwrap_err()
        .to_string()
        .contains("finite"));
    assert!(Axis::parse("x=linspace:0:1")
        .unwrap_err()
        .to_string()
        .contains("linspace:START:STOP:N"));
    assert!(Axis::parse("x=linspace:0:1:0")
        .unwrap_err()
        .to_string()
        .contains("N must be in"));
}

#[test]
fn samples_are_deterministic_within_bounds_and_seed_dependent() {
    let space = |seed| Space {
        axes: [
            "lr=loguniform:1e-5:1e-1",
            "depth=randint:2:5",
            "drop=uniform:0:0.5",
            "opt=adam,sgd",
        ]
        .iter()
        .map(|a| Axis::parse(a).unwrap())
        .collect(),
        repeat: 1,
        sample: Some(Sample { n: 2_000, seed }),
    };
    let (a, b, c) = (space(7), space(7), space(8));
    assert_eq!(a.validate(10_000).unwrap(), 2_000);
    let pa: Vec<_> = (0..2_000).map(|i| a.point(i)).collect();
    assert_eq!(pa, (0..2_000).map(|i| b.point(i)).collect::<Vec<_>>());
    assert_ne!(pa, (0..2_000).map(|i| c.point(i)).collect::<Vec<_>>());
    let mut depths = std::collections::BTreeSet::new();
    for p in &pa {
        let Value::Float(lr) = p[0] else { panic!() };
        assert!((1e-5..1e-1).contains(&lr), "{lr}");
        let Value::Int(d) = p[1] else { panic!() };
        depths.insert(d);
        let Value::Float(dr) = p[2] else { panic!() };
        assert!((0.0..0.5).contains(&dr));
        assert!(matches!(&p[3], Value::Text(t) if &**t == "adam" || &**t == "sgd"));
    }
    // randint: HIGH excluded, every value reached.
    assert_eq!(depths.into_iter().collect::<Vec<_>>(), vec![2, 3, 4]);
    // Log-uniform: about a quarter of the draws per decade.
    let low = pa
        .iter()
        .filter(|p| matches!(p[0], Value::Float(x) if x < 1e-4))
        .count();
    assert!((400..600).contains(&low), "{low}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Index → point against a brute-force product: every point once,
        /// in order, for small grids with repeats.
        #[test]
        fn decoding_matches_the_brute_force_product(lens in proptest::collection::vec(1u64..5, 1..5), repeat in 1u64..4) {
            let axes: Vec<Axis> = lens
                .iter()
                .enumerate()
                .map(|(j, n)| Axis { name: format!("a{j}"), kind: AxisKind::IntRange { start: 0, stop: *n as i64, step: 1 } })
                .collect();
            let s = Space { axes, repeat, sample: None };
            let total = s.validate(u64::MAX).unwrap();
            let mut want: Vec<Vec<i64>> = vec![vec![]];
            for n in &lens {
                want = want.into_iter().flat_map(|p| (0..*n as i64).map(move |v| { let mut q = p.clone(); q.push(v); q })).collect();
            }
            let want: Vec<Vec<i64>> = want.into_iter().flat_map(|p| (0..repeat as i64).map(move |r| {
                let mut q = p.clone();
                if repeat > 1 { q.push(r); }
                q
            })).collect();
            prop_assert_eq!(total, want.len() as u64);
            for (i, w) in want.iter().enumerate() {
                let got: Vec<i64> = s.point(i as u64).iter().map(|v| match v { Value::Int(x) => *x, _ => -1 }).collect();
                prop_assert_eq!(&got, w);
            }
        }

        /// Walking a range of points gives exactly the decoded points.
        #[test]
        fn walking_matches_decoding(lens in proptest::collection::vec(1u64..5, 1..4), repeat in 1u64..4, a in 0u64..200, len in 0u64..60) {
            let axes: Vec<Axis> = lens
                .iter()
                .enumerate()
                .map(|(j, n)| Axis { name: format!("a{j}"), kind: AxisKind::List((0..*n).map(|v| if j == 0 { Value::Text(format!("t{v}").into()) } else { Value::Float(v as f64 / 2.0) }).collect()) })
                .collect();
            let s = Space { axes, repeat, sample: None };
            let total = s.validate(u64::MAX).unwrap();
            let (start, end) = (a.min(total), (a + len).min(total));
            let mut got = Vec::new();
            s.walk(start, end, |i, p| got.push((i, p.to_vec())));
            let want: Vec<_> = (start..end).map(|i| (i, s.point(i))).collect();
            prop_assert_eq!(got, want);
        }

        /// Any `--axis` text parses or is refused with a field, never panics;
        /// a valid listed axis yields exactly `len` values.
        #[test]
        fn any_axis_text_parses_or_is_refused(s in "[a-z]{1,3}=[a-z0-9.,:e-]{0,24}") {
            if let Ok(a) = Axis::parse(&s) {
                let space = Space { axes: vec![a], repeat: 1, sample: None };
                if let Ok(n) = space.validate(10_000) {
                    for i in 0..n {
                        prop_assert_eq!(space.point(i).len(), 1);
                    }
                }
            }
        }
    }
}
