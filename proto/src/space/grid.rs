//! A grid's coordinates by axis: which value of an axis point `i` has
//! (its mixed-radix digit), and an axis's values as labels — what a
//! heatmap over two axes of a grid needs (the dashboard reduces the other
//! axes), without decoding whole points.

use super::Space;

impl Space {
    /// Position of `name` among [`Space::names`].
    pub fn axis_index(&self, name: &str) -> Option<usize> {
        self.names().iter().position(|n| *n == name)
    }

    /// Number of values of axis `axis` (index into [`Space::names`]): `rep`
    /// has `repeat`; None for a random search or a sampling-only axis.
    pub fn axis_len(&self, axis: usize) -> Option<u64> {
        if self.sample.is_some() {
            return None;
        }
        match self.axes.get(axis) {
            Some(a) => a.len(),
            None if axis == self.axes.len() && self.repeat > 1 => Some(self.repeat),
            None => None,
        }
    }

    /// Which value of axis `axis` point `i` of a grid has (< its length).
    pub fn digit(&self, i: u64, axis: usize) -> u64 {
        if axis >= self.axes.len() {
            return i % self.repeat.max(1);
        }
        let mut rest = i / self.repeat.max(1);
        for a in self.axes[axis + 1..].iter().rev() {
            rest /= a.len().unwrap_or(1).max(1);
        }
        rest % self.axes[axis].len().unwrap_or(1).max(1)
    }

    /// The `k`-th value of axis `axis` as text (`rep`: `k`).
    pub fn label(&self, axis: usize, k: u64) -> String {
        match self.axes.get(axis) {
            Some(a) => a.value(k).to_string(),
            None => k.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Axis, Space};

    #[test]
    fn digits_agree_with_decoded_points() {
        let space = Space {
            axes: vec![
                Axis::parse("a=range:0:3").expect("a"),
                Axis::parse("b=x,y").expect("b"),
                Axis::parse("c=linspace:0:1:5").expect("c"),
            ],
            repeat: 2,
            sample: None,
        };
        for i in 0..space.len() {
            let p = space.point(i);
            assert_eq!(p.len(), 4);
            for (axis, value) in p.iter().enumerate() {
                let k = space.digit(i, axis);
                assert!(k < space.axis_len(axis).expect("a grid axis"));
                assert_eq!(
                    space.label(axis, k),
                    value.to_string(),
                    "point {i} axis {axis}"
                );
            }
        }
        assert_eq!(space.axis_index("rep"), Some(3));
        assert_eq!(space.axis_len(3), Some(2));
    }
}
