// Starts Swagger UI on the service's own OpenAPI document.
"use strict";

window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    // Relative, like every URL on this page, so it also works behind a path prefix.
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The default sends the document to an online validator: nothing leaves the host.
    validatorUrl: null,
    displayRequestDuration: true,
  });
});
