//! Temporary stand-in for codec::Block while it is written.
#[derive(Debug, Clone)]
pub struct Block(Box<[(i64, f64)]>);
impl Block {
    pub fn encode(points: &[(i64, f64)]) -> Block {
        Block(points.into())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn first(&self) -> i64 {
        self.0[0].0
    }
    pub fn last(&self) -> i64 {
        self.0[self.0.len() - 1].0
    }
    pub fn heap_bytes(&self) -> usize {
        self.0.len() * 16
    }
    pub fn iter(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.0.iter().copied()
    }
    pub fn decode_into(&self, out: &mut Vec<(i64, f64)>) {
        out.extend_from_slice(&self.0);
    }
}
