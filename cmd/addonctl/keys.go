package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/addond/addond/daemon/signing"
)

func newKeygen() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use: "keygen --out DIR",
		Example: `  addonctl keygen --out /root/keys
  install -m 0644 /root/keys/signing.pub /etc/addond/trust.d/publisher.pub`,
		Short: "Create an Ed25519 signing key pair (DIR/signing.key, DIR/signing.pub)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			privPEM, pubPEM, err := signing.GenerateKey()
			if err != nil {
				return err
			}
			keyPath, pubPath := filepath.Join(out, "signing.key"), filepath.Join(out, "signing.pub")
			for _, p := range []string{keyPath, pubPath} {
				if _, err := os.Lstat(p); err == nil {
					return fmt.Errorf("%s exists; refusing to overwrite a key", p)
				}
			}
			if err := writeExclusive(keyPath, privPEM, 0o600); err != nil {
				return err
			}
			if err := writeExclusive(pubPath, pubPEM, 0o644); err != nil {
				return err
			}
			pub, _ := signing.ParsePublicKeyPEM(pubPEM)
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s (key_id %s)\n", keyPath, pubPath, signing.KeyID(pub))
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "directory for the key pair")
	c.MarkFlagRequired("out")
	return c
}

func writeExclusive(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newSign() *cobra.Command {
	var keyPath string
	c := &cobra.Command{
		Use:     "sign --key KEY FILE",
		Example: `  addonctl sign --key /root/keys/signing.key bin/pingsweep`,
		Short:   "Print the hex Ed25519 signature of FILE's bytes",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			priv, err := signing.LoadPrivateKey(keyPath)
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			var sums [2][]byte
			sig, err := signing.SignStream(priv, func(pass int, w io.Writer) error {
				h := sha256.New()
				_, err := io.Copy(io.MultiWriter(w, h), io.NewSectionReader(f, 0, fi.Size()))
				sums[pass-1] = h.Sum(nil)
				return err
			})
			if err != nil {
				return err
			}
			if string(sums[0]) != string(sums[1]) {
				return errors.New("file changed while it was being signed; nothing signed")
			}
			fmt.Fprintln(cmd.OutOrStdout(), hex.EncodeToString(sig))
			return nil
		},
	}
	c.Flags().StringVar(&keyPath, "key", "", "PKCS#8 PEM private key")
	c.MarkFlagRequired("key")
	return c
}

func newVerify() *cobra.Command {
	var keyPath, sumHex, sigArg string
	c := &cobra.Command{
		Use: "verify --key PUB --sha256 HEX [--signature SIG] FILE",
		Example: `  addonctl verify --key signing.pub --sha256 "$(sha256sum pingsweep | cut -d' ' -f1)" \\
    --signature "$(addonctl sign --key signing.key pingsweep)" pingsweep`,
		Short: "Check a file's sha256 and Ed25519 signature offline",
		Long: `verify streams FILE once through SHA-256 and Ed25519 verification. SIG is
the signature in hex or base64, or the path of a .sig file.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pub, err := signing.LoadPublicKey(keyPath)
			if err != nil {
				return err
			}
			want, err := signing.DecodeSHA256(sumHex)
			if err != nil {
				return err
			}
			var v *signing.Verifier
			if sigArg != "" {
				sig, err := readSignatureArg(sigArg)
				if err != nil {
					return err
				}
				if v, err = signing.NewVerifier(pub, sig); err != nil {
					return err
				}
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			h := sha256.New()
			w := io.Writer(h)
			if v != nil {
				w = io.MultiWriter(h, v)
			}
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
			if got := h.Sum(nil); string(got) != string(want) {
				return fmt.Errorf("%s: sha256 mismatch: got %x, want %x", args[0], got, want)
			}
			if v != nil && !v.Verify() {
				return fmt.Errorf("%s: %w under key %s", args[0], signing.ErrBadSignature, signing.KeyID(pub))
			}
			msg := "sha256 matches"
			if v != nil {
				msg += ", signature verifies under key " + signing.KeyID(pub)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: OK (%s)\n", args[0], msg)
			return nil
		},
	}
	c.Flags().StringVar(&keyPath, "key", "", "PKIX PEM public key")
	c.Flags().StringVar(&sumHex, "sha256", "", "expected SHA-256 (hex or base64)")
	c.Flags().StringVar(&sigArg, "signature", "", "signature (hex, base64, or a .sig file)")
	c.MarkFlagRequired("key")
	c.MarkFlagRequired("sha256")
	return c
}

func readSignatureArg(s string) ([]byte, error) {
	if sig, err := signing.DecodeSignature(strings.TrimSpace(s)); err == nil {
		return sig, nil
	}
	data, err := os.ReadFile(s)
	if err != nil {
		return nil, fmt.Errorf("--signature is neither a signature nor a readable file: %w", err)
	}
	return signing.ParseSigFile(data)
}
