//! One block: BLAKE2b-256 key of the plaintext, raw Snappy, AES-256-GCM with the key and
//! nonce `key[0..12]`, BLAKE2b-256 id of the ciphertext.
//!
//! The nonce is derived from the key on purpose (as in rfs): the same plaintext always
//! gives the same ciphertext, so stores deduplicate. It is safe because a key encrypts
//! exactly one plaintext (the one it is the hash of).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

use crate::error::BlockError;
use crate::BLOCK_SIZE;

type Blake2b256 = Blake2b<U32>;

/// The largest ciphertext a valid block can have: worst-case Snappy expansion of a full
/// block plus the 16-byte GCM tag. Anything bigger is refused before hashing.
pub const MAX_CIPHERTEXT: usize = 32 + BLOCK_SIZE + BLOCK_SIZE / 6 + 16;

/// A block reference as stored in the `block` table.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// BLAKE2b-256 of the ciphertext: the name of the blob in a store.
    pub id: [u8; 32],
    /// BLAKE2b-256 of the plaintext: the AES-256 key.
    pub key: [u8; 32],
}

impl BlockRef {
    /// The id in lowercase hex: the blob's name in a store and in the cache.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

impl std::fmt::Debug for BlockRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key decrypts the block; print only the id.
        write!(f, "BlockRef({})", self.id_hex())
    }
}

/// BLAKE2b with a 32-byte digest (not a truncated BLAKE2b-512: the length is a parameter).
pub fn blake2b256(data: &[u8]) -> [u8; 32] {
    Blake2b256::digest(data).into()
}

/// Encodes a plaintext block: returns its reference and the ciphertext to store.
pub fn encode(plain: &[u8]) -> (BlockRef, Vec<u8>) {
    let key = blake2b256(plain);
    let compressed = snap::raw::Encoder::new()
        .compress_vec(plain)
        .expect("snappy compresses any input shorter than 4 GiB");
    let cipher = Aes256Gcm::new((&key).into());
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&key[..12]), compressed.as_slice())
        .expect("AES-GCM encrypts any input shorter than 64 GiB");
    let id = blake2b256(&ciphertext);
    (BlockRef { id, key }, ciphertext)
}

/// Checks a ciphertext against its id, decrypts, decompresses and checks the plaintext
/// against its key. Only a block that passes both hashes is returned.
pub fn decode(block: &BlockRef, ciphertext: &[u8]) -> Result<Vec<u8>, BlockError> {
    if ciphertext.len() > MAX_CIPHERTEXT {
        return Err(BlockError::TooLarge {
            len: ciphertext.len() as u64,
        });
    }
    let id = blake2b256(ciphertext);
    if id != block.id {
        return Err(BlockError::IdMismatch {
            actual: hex::encode(id),
        });
    }
    let cipher = Aes256Gcm::new((&block.key).into());
    let compressed = cipher
        .decrypt(Nonce::from_slice(&block.key[..12]), ciphertext)
        .map_err(|_| BlockError::Decrypt)?;
    // Check the declared length before allocating: a hostile block could claim 4 GiB.
    let len = snap::raw::decompress_len(&compressed)
        .map_err(|e| BlockError::Decompress(e.to_string()))?;
    if len > BLOCK_SIZE {
        return Err(BlockError::WrongLength {
            expected: BLOCK_SIZE,
            actual: len,
        });
    }
    let plain = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .map_err(|e| BlockError::Decompress(e.to_string()))?;
    check_plain(block, &plain)?;
    Ok(plain)
}

/// Checks a plaintext (e.g. read back from the cache) against the block key.
pub fn check_plain(block: &BlockRef, plain: &[u8]) -> Result<(), BlockError> {
    let key = blake2b256(plain);
    if key != block.key {
        return Err(BlockError::KeyMismatch {
            actual: hex::encode(key),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_each_refusal() {
        let plain = b"hello flist".repeat(1000);
        let (r, ct) = encode(&plain);
        assert_eq!(decode(&r, &ct).unwrap(), plain);

        let mut bad = ct.clone();
        bad[3] ^= 1;
        assert!(matches!(
            decode(&r, &bad),
            Err(BlockError::IdMismatch { .. })
        ));

        // Right id, wrong key: GCM refuses.
        let mut wrong_key = r;
        wrong_key.key[0] ^= 1;
        assert_eq!(decode(&wrong_key, &ct), Err(BlockError::Decrypt));

        // Encrypted with a key that is not the hash of the plaintext: decrypts, but the
        // plaintext check refuses it.
        let key = [9u8; 32];
        let compressed = snap::raw::Encoder::new().compress_vec(b"x").unwrap();
        let ct = Aes256Gcm::new((&key).into())
            .encrypt(Nonce::from_slice(&key[..12]), compressed.as_slice())
            .unwrap();
        let r = BlockRef {
            id: blake2b256(&ct),
            key,
        };
        assert!(matches!(
            decode(&r, &ct),
            Err(BlockError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn blake2b256_is_the_parameterised_variant() {
        // BLAKE2b with digest length 32 of "abc" (RFC 7693 parameters, not truncation).
        assert_eq!(
            hex::encode(blake2b256(b"abc")),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"
        );
    }
}
