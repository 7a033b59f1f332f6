// Swagger UI over this service's own OpenAPI document. Nothing is fetched
// from elsewhere: no validator badge (it would send the document to
// validator.swagger.io), and the page's Content-Security-Policy allows only
// this origin.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
});
