package record_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/handshaked/handshaked/internal/engine/record"
)

func TestAlertName(t *testing.T) {
	assert.Equal(t, "illegal_parameter", record.AlertName(47))
	assert.Equal(t, "close_notify", record.AlertName(0))
	assert.Equal(t, "no_application_protocol", record.AlertName(120))
	assert.Equal(t, "alert(255)", record.AlertName(255))
	// Alerts TLS 1.3 reserves that older peers send, and ECH's, are
	// named in the log, not alert(N).
	assert.Equal(t, "decompression_failure", record.AlertName(30))
	assert.Equal(t, "no_certificate", record.AlertName(41))
	assert.Equal(t, "certificate_unobtainable", record.AlertName(111))
	assert.Equal(t, "bad_certificate_hash_value", record.AlertName(114))
	assert.Equal(t, "ech_required", record.AlertName(121))
}
