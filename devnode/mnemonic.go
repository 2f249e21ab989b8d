package devnode

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"crypto/sha512"
	"strings"
)

// IdentityFromMnemonic returns the identity openbazaar-go restores from a
// BIP39 recovery phrase: the BIP39 seed (PBKDF2-HMAC-SHA512, 2048 rounds,
// salt "mnemonic" + the passphrase "Secret Passphrase"), then
// HMAC-SHA256 under the key "OpenBazaar seed" as the Ed25519 seed
// (openbazaar-go's ipfs.IdentityKeyFromSeed). The words are not checked
// against the BIP39 word list or checksum here (the browser client does
// that); English words need no Unicode normalization.
func IdentityFromMnemonic(mnemonic string) ed25519.PrivateKey {
	words := strings.Join(strings.Fields(strings.ToLower(mnemonic)), " ")
	seed, err := pbkdf2.Key(sha512.New, words, []byte("mnemonic"+"Secret Passphrase"), 2048, 64)
	if err != nil {
		panic(err) // only for key lengths out of range, and 64 is not
	}
	m := hmac.New(sha256.New, []byte("OpenBazaar seed"))
	m.Write(seed)
	return ed25519.NewKeyFromSeed(m.Sum(nil))
}
