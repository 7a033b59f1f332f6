package servicetest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
)

// PostJSON posts body as JSON to url with client, reads the answer and
// fails unless it is 200 OK: one REST call of a benchmark's load.
func PostJSON(client *http.Client, url string, body []byte) error {
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("POST %s: %s: %s", url, resp.Status, answer)
	}
	return err
}
