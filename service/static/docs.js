// Renders openapi.json into a list of endpoints, with no third-party code.
"use strict";

function element(tag, attrs, children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([key, value]) => node.setAttribute(key, value));
  (children || []).forEach((child) =>
    node.appendChild(typeof child === "string" ? document.createTextNode(child) : child));
  return node;
}

function schemaFor(spec, operation) {
  const body = operation.requestBody;
  if (!body) return null;
  const ref = body.content["application/json"].schema.$ref;
  return spec.components.schemas[ref.split("/").pop()];
}

function render(spec) {
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  const main = document.getElementById("endpoints");
  main.replaceChildren();
  Object.entries(spec.paths).forEach(([path, operations]) => {
    Object.entries(operations).forEach(([method, operation]) => {
      const section = element("section", { class: "endpoint", "data-method": method.toUpperCase(), "data-path": path }, [
        element("h2", {}, [element("span", { class: "method " + method }, [method]), element("code", { class: "path" }, [path])]),
        element("p", { class: "summary" }, [operation.summary]),
      ]);
      if (operation.description) section.appendChild(element("p", {}, [operation.description]));
      const schema = schemaFor(spec, operation);
      if (schema) section.appendChild(element("pre", {}, [JSON.stringify(schema, null, 2)]));
      const codes = Object.entries(operation.responses).map(([code, r]) => code + ": " + r.description);
      section.appendChild(element("p", { class: "responses" }, ["Responses: " + codes.join("; ")]));
      main.appendChild(section);
    });
  });
}

fetch("openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((error) => { document.getElementById("loading").textContent = "Could not load openapi.json: " + error; });
