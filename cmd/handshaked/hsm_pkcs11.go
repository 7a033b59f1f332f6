//go:build pkcs11

package main

import "github.com/handshaked/handshaked/internal/keyvault/pkcs11"

func init() {
	openTokenBackend = func(h *hsmConfig) (tokenBackend, error) {
		cfg := pkcs11.Config{Module: h.module, TokenLabel: h.token, PIN: h.pin, Sessions: h.sessions}
		if h.slot >= 0 {
			cfg.Slot = uint(h.slot)
		}
		return pkcs11.Open(cfg)
	}
}
