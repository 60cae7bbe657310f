// The document around the chat. No web fonts: nothing here is fetched from the internet, at build time or
// in the browser. app/icon.svg and app/favicon.ico are picked up by Next.js as the page's icons.
import "./globals.css";

export const metadata = { title: "Keel · Next.js chat", description: "useChat on Keel's gateway" };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
