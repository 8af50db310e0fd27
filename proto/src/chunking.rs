//! How a run's parameters are cut into chunks: chunk `i` covers
//! `[i * chunk_size, min((i + 1) * chunk_size, params))`, so chunks cover
//! `[0, params)` exactly, with no gap and no overlap, and only the last is short.

/// Number of chunks for `params` parameters in chunks of `chunk_size`.
/// Both must be at least 1 (validated at Submit).
pub fn chunk_count(params: u64, chunk_size: u64) -> u64 {
    if chunk_size == 0 {
        return 0;
    }
    params.div_ceil(chunk_size)
}

/// Parameter range `[start, end)` of chunk `index`.
pub fn chunk_range(params: u64, chunk_size: u64, index: u64) -> (u64, u64) {
    let start = index.saturating_mul(chunk_size).min(params);
    let end = start.saturating_add(chunk_size).min(params);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunks_tile_the_range(params in 1u64..=200_000, chunk_size in 1u64..=5_000) {
            let n = chunk_count(params, chunk_size);
            let mut next = 0;
            for i in 0..n {
                let (s, e) = chunk_range(params, chunk_size, i);
                prop_assert_eq!(s, next);
                prop_assert!(e > s);
                if i + 1 < n { prop_assert_eq!(e - s, chunk_size); }
                next = e;
            }
            prop_assert_eq!(next, params);
        }

        #[test]
        fn edges_at_ten_to_the_ten(params in (10_000_000_000u64 - 1_000_000)..=10_000_000_000, chunk_size in 10_000u64..=1_000_000) {
            let n = chunk_count(params, chunk_size);
            let (s, e) = chunk_range(params, chunk_size, n - 1);
            prop_assert_eq!(e, params);
            prop_assert!(e - s <= chunk_size && e > s);
            prop_assert_eq!(chunk_range(params, chunk_size, n - 2).1, s);
        }
    }

    #[test]
    fn chunk_larger_than_params_gives_one_chunk() {
        assert_eq!(chunk_count(10, 100), 1);
        assert_eq!(chunk_range(10, 100, 0), (0, 10));
        assert_eq!(chunk_count(10_000, 100), 100);
        assert_eq!(chunk_range(10_001, 100, 100), (10_000, 10_001));
    }
}
