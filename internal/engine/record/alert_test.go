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
}
