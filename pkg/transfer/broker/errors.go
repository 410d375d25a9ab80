package broker

import (
	"fmt"
	"net/http"
)

// Error is a refusal with one of the Code* values. The server's
// Authenticate and Authorize return it to choose the answer; the client
// returns it for every non-2xx answer.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf makes an *Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// httpStatus is the HTTP status that carries code.
func httpStatus(code string) int {
	switch code {
	case CodeUnauthenticated:
		return http.StatusUnauthorized
	case CodeDenied:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeInvalid:
		return http.StatusBadRequest
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// codeOf guesses the code of an answer without a readable body (a proxy's
// error page, say).
func codeOf(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return CodeUnauthenticated
	case http.StatusForbidden:
		return CodeDenied
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return CodeInvalid
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout, http.StatusTooManyRequests:
		return CodeUnavailable
	default:
		return CodeInternal
	}
}

func knownCode(code string) bool {
	switch code {
	case CodeUnauthenticated, CodeDenied, CodeNotFound, CodeInvalid, CodeUnavailable, CodeInternal:
		return true
	}
	return false
}
