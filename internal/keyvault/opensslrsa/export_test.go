//go:build openssl

package opensslrsa

var CheckVersion = checkVersion
