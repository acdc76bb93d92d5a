// One request through the sidecar with Java's java.net.http.HttpClient, as a
// connector makes it: HttpClient.newHttpClient(), its defaults untouched.
//
// Usage: java Interop.java CASE URL BODY_FILE
//
// CASE is get, content-length, chunked or expect. Prints "sending" right
// before the request, then one JSON object: {"status": int, "body": string}. HttpClient does not expose interim
// responses, so there is no count of 100 Continue here; the test counts
// them on the wire.

import java.io.ByteArrayInputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpRequest.BodyPublishers;
import java.net.http.HttpResponse;
import java.net.http.HttpResponse.BodyHandlers;
import java.nio.file.Files;
import java.nio.file.Path;

public class Interop {
    public static void main(String[] args) throws Exception {
        String kase = args[0];
        byte[] body = kase.equals("get") ? new byte[0] : Files.readAllBytes(Path.of(args[2]));
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(args[1]));
        if (!kase.equals("get")) {
            request.header("Content-Type", "application/octet-stream");
        }
        switch (kase) {
            case "get":
                request.GET();
                break;
            case "content-length":
                request.POST(BodyPublishers.ofByteArray(body));
                break;
            case "chunked": // a body of unknown length goes out chunked
                request.POST(BodyPublishers.ofInputStream(() -> new ByteArrayInputStream(body)));
                break;
            case "expect":
                request.expectContinue(true).POST(BodyPublishers.ofByteArray(body));
                break;
            default:
                throw new IllegalArgumentException("unknown case " + kase);
        }
        HttpClient client = HttpClient.newHttpClient();
        System.out.println("sending");
        System.out.flush();
        HttpResponse<String> response = client.send(request.build(), BodyHandlers.ofString());
        System.out.println("{\"status\":" + response.statusCode() + ",\"body\":" + quote(response.body()) + "}");
    }

    // quote renders s as a JSON string (RFC 8259 section 7).
    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
