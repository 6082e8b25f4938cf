//! Splitting a whole number of closes between pods in proportion to their weights, exactly
//! (largest remainder), so that the parts never add up to more than the whole.

/// Splits `total` by `weights`, each part capped by its weight; returns parts in order.
/// The sum of parts is `min(total, sum of weights)`.
pub(crate) fn proportional(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    if sum == 0 || total == 0 {
        return vec![0; weights.len()];
    }
    if total >= sum {
        return weights.to_vec();
    }
    let mut parts: Vec<u64> = weights
        .iter()
        .map(|w| ((*w as u128 * total as u128) / sum as u128) as u64)
        .collect();
    let mut left = total - parts.iter().sum::<u64>();
    // Hand out what rounding kept back, largest remainder first (ties: earlier pod).
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| {
        let rem = (weights[i] as u128 * total as u128) % sum as u128;
        (std::cmp::Reverse(rem), i)
    });
    for i in order {
        if left == 0 {
            break;
        }
        if parts[i] < weights[i] {
            parts[i] += 1;
            left -= 1;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::proportional;

    #[test]
    fn exact_and_capped() {
        assert_eq!(proportional(10, &[1, 1]), vec![1, 1]);
        assert_eq!(proportional(3, &[10, 10, 10]), vec![1, 1, 1]);
        assert_eq!(proportional(2, &[10, 10, 10]), vec![1, 1, 0]);
        assert_eq!(proportional(7, &[0, 30, 40]), vec![0, 3, 4]);
        assert_eq!(proportional(0, &[5]), vec![0]);
        assert_eq!(proportional(5, &[]), Vec::<u64>::new());
        let parts = proportional(1_000, &[333, 333, 334, 1]);
        assert_eq!(parts.iter().sum::<u64>(), 1_000);
    }
}
