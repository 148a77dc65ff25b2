//! The benchmark's keys and values: `key:` and 12 digits like redis-benchmark's, values a
//! deterministic function of the key (so that any answer can be checked without keeping
//! what was written), random keys of one slot, and which keys this run has stored.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::routing::slot_of;

/// Keys are `key:` and 12 decimal digits, like redis-benchmark's `key:__rand_int__`.
pub(super) const KEY_LEN: usize = 16;
/// Keyspaces up to this size get a list of every slot's keys (4 bytes a key, made once);
/// larger ones draw keys until one falls in the slot.
const LISTED_KEYSPACE: u64 = 1 << 21;

/// The key with index `index`: `key:` and 12 digits.
pub fn key_of(index: u64) -> [u8; KEY_LEN] {
    let mut key = *b"key:000000000000";
    let mut rest = index;
    for byte in key[4..].iter_mut().rev() {
        *byte = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

pub(super) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key `index`'s value, eight bytes at a time: lowercase letters `a` to `p` from a
/// splitmix stream (one step per 8 bytes, so checking a 1 KiB answer costs little). A value
/// of any length is a prefix of the longer ones, so a value written by an earlier run with
/// another `-d` still checks.
pub(super) fn value_words(index: u64) -> impl Iterator<Item = [u8; 8]> {
    let mut state = index ^ 0x6674_6b76_6265_6e63;
    std::iter::repeat_with(move || {
        ((splitmix64(&mut state) & 0x0f0f_0f0f_0f0f_0f0f) + 0x6161_6161_6161_6161).to_le_bytes()
    })
}

/// The value the benchmark stores under key `index`.
pub fn value_of(index: u64, len: usize) -> Vec<u8> {
    value_words(index).flatten().take(len).collect()
}

/// Whether `value` is a value the benchmark could have stored under key `index`.
pub(super) fn is_value_of(index: u64, value: &[u8]) -> bool {
    let mut words = value_words(index);
    let mut chunks = value.chunks_exact(8);
    chunks.by_ref().zip(words.by_ref()).all(|(chunk, word)| chunk == word) && {
        let rest = chunks.remainder();
        words.next().is_some_and(|word| rest == &word[..rest.len()])
    }
}

/// Draws random keys of a given slot.
pub(super) struct KeyPicker {
    pub(super) keyspace: u64,
    slots: u32,
    /// `by_slot[s]`: the indices of the keys of slot `s`, when the keyspace is listed.
    by_slot: Option<Vec<Vec<u32>>>,
}

impl KeyPicker {
    pub(super) fn new(keyspace: u64, slots: u32) -> Self {
        let by_slot = (keyspace <= LISTED_KEYSPACE).then(|| {
            let mut by_slot = vec![Vec::new(); slots as usize];
            for index in 0..keyspace {
                by_slot[slot_of(&key_of(index), slots) as usize].push(index as u32);
            }
            by_slot
        });
        KeyPicker { keyspace, slots, by_slot }
    }

    /// A random key index of `slot`, and its slot: `slot`, unless `slot` has no keys at all
    /// (a tiny keyspace), when any key will do.
    pub(super) fn pick(&self, slot: u32, rng: &mut u64) -> (u64, u32) {
        match &self.by_slot {
            Some(by_slot) => match &by_slot[slot as usize] {
                keys if keys.is_empty() => {
                    let index = below(rng, self.keyspace);
                    (index, slot_of(&key_of(index), self.slots))
                }
                keys => (u64::from(keys[below(rng, keys.len() as u64) as usize]), slot),
            },
            None => loop {
                let index = below(rng, self.keyspace);
                if slot_of(&key_of(index), self.slots) == slot {
                    return (index, slot);
                }
            },
        }
    }
}

/// A random number below `bound`: multiply-shift, uniform enough for a benchmark and no
/// division.
fn below(rng: &mut u64, bound: u64) -> u64 {
    ((u128::from(splitmix64(rng)) * u128::from(bound)) >> 64) as u64
}

/// Which keys a put of this run has stored (acknowledged), one bit per key.
pub(super) struct StoredKeys(Vec<AtomicU64>);

impl StoredKeys {
    pub(super) fn new(keyspace: u64) -> Self {
        StoredKeys((0..keyspace.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    pub(super) fn set(&self, index: u64) {
        self.0[(index / 64) as usize].fetch_or(1 << (index % 64), Ordering::Relaxed);
    }

    pub(super) fn get(&self, index: u64) -> bool {
        self.0[(index / 64) as usize].load(Ordering::Relaxed) & (1 << (index % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sixteen_bytes_like_redis_benchmark() {
        assert_eq!(&key_of(0), b"key:000000000000");
        assert_eq!(&key_of(12345), b"key:000000012345");
        assert_eq!(&key_of(999_999_999_999), b"key:999999999999");
    }

    #[test]
    fn values_are_deterministic_and_prefixes_of_each_other() {
        let v = value_of(42, 1024);
        assert_eq!(v, value_of(42, 1024));
        assert!(v.iter().all(u8::is_ascii_lowercase));
        assert_eq!(&v[..16], &value_of(42, 16)[..]);
        assert_ne!(value_of(42, 16), value_of(43, 16));
        assert!(is_value_of(42, &v));
        assert!(is_value_of(42, &v[..3]));
        assert!(is_value_of(42, b""));
        let mut wrong = v.clone();
        wrong[1000] ^= 1;
        assert!(!is_value_of(42, &wrong));
        assert!(!is_value_of(43, &v));
    }

    #[test]
    fn picked_keys_belong_to_the_slot() {
        let mut rng = 7;
        for picker in [KeyPicker::new(1000, 3), KeyPicker::new(LISTED_KEYSPACE + 1, 3)] {
            let mut seen = std::collections::HashSet::new();
            for slot in 0..3 {
                for _ in 0..200 {
                    let (index, its_slot) = picker.pick(slot, &mut rng);
                    assert!(index < picker.keyspace);
                    assert_eq!(its_slot, slot);
                    assert_eq!(slot_of(&key_of(index), 3), slot);
                    seen.insert(index);
                }
            }
            assert!(seen.len() > 400, "keys repeat too often: {}", seen.len());
        }
        // A keyspace of one key has two empty slots: any key will do.
        let only = (0, slot_of(&key_of(0), 3));
        assert_eq!(KeyPicker::new(1, 3).pick(0, &mut rng), only);
        assert_eq!(KeyPicker::new(1, 3).pick(1, &mut rng), only);
    }

    #[test]
    fn stored_keys_bitset() {
        let stored = StoredKeys::new(130);
        assert!(!stored.get(129));
        stored.set(129);
        stored.set(0);
        assert!(stored.get(129) && stored.get(0) && !stored.get(64));
    }
}
