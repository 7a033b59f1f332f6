package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := range 100 {
		lat = append(lat, time.Duration(i+1)*time.Millisecond)
	}
	assert.Equal(t, 51*time.Millisecond, percentile(lat, 0.50))
	assert.Equal(t, 100*time.Millisecond, percentile(lat, 0.99))
	assert.Equal(t, time.Duration(0), percentile(nil, 0.99))
}
